"""The I/O kernels: sandboxed files, read-only SQLite and HTTP, each held to the run's policy.

Every kernel here is impure and refused unless the run was given a ``Policy``
(``lycan.policy``) that grants it; a refusal is a ``CapabilityDenied`` (a
``CapabilityError``) naming the kernel and the reason.

* ``file.*`` paths are relative to the policy's ``root``. Each component is opened with
  ``O_NOFOLLOW`` relative to its parent's directory descriptor, so ``..``, absolute paths,
  symbolic links (anywhere in the path) and special files are all refused, whatever races
  happen around the call. Writes go to a temporary file in the same directory and are renamed
  into place; the policy file itself can never be the target.
* ``sql.sqliteQuery`` opens a listed database with ``mode=ro``, accepts only statements that
  start with ``SELECT`` or ``WITH``, and installs an authorizer that allows only reads.
* ``http.get`` / ``http.post`` resolve the host themselves, refuse every non-public address
  (``address_refusal``) and connect a socket to the address that was checked; redirects are
  returned, never followed.

>>> address_refusal(ipaddress.ip_address("169.254.169.254"))
'link-local (169.254.0.0/16, includes cloud metadata)'
>>> address_refusal(ipaddress.ip_address("::ffff:127.0.0.1"))
'IPv4-mapped 127.0.0.1: loopback (127.0.0.0/8)'
>>> address_refusal(ipaddress.ip_address("93.184.215.14")) is None
True
"""

import ipaddress  # noqa: F401  (the doctests above use it)

from lycan.sandbox.files import file_exists, file_read_text, file_write_text
from lycan.sandbox.http import address_refusal, http_get, http_post
from lycan.sandbox.sqlite import sql_sqlite_query

__all__ = ["address_refusal", "file_exists", "file_read_text", "file_write_text", "http_get",
           "http_post", "sql_sqlite_query"]
