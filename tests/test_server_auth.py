"""Scopes, principals, the token store and the failed-login limiter (syntra.server.auth)."""

import hashlib
import json
import re
import threading
import time

import pytest

from syntra.errors import InvalidConfig
from syntra.server.auth import (
    DEFAULT_TTL_SECONDS,
    MAX_TTL_SECONDS,
    FailedAuthLimiter,
    InvalidScope,
    InvalidTokenRequest,
    Principal,
    Scope,
    TokenFileCorrupt,
    TokenStore,
    Unauthenticated,
    UnknownToken,
)

JOB = "tenants/acme/jobs/llm"
CAPSULE = "tenants/acme/jobs/llm/capsules/router"
ADMIN_KEY = "k" * 40


class Clock:
    """A settable wall clock for expiry."""

    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


# --- scopes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "role, resource",
    [
        ("admin", ""),
        ("tenant_admin", "tenants/acme"),
        ("decide", JOB),
        ("feedback", CAPSULE),
        ("read", "tenants/A-b_9/jobs/x/capsules/" + "c" * 128),
    ],
)
def test_valid_scopes_parse_and_print_back(role, resource):
    scope = Scope.parse(role, resource)
    assert (scope.role, scope.resource) == (role, resource)
    assert Scope.from_text(str(scope)) == scope


def test_scope_text_form():
    assert str(Scope.parse("admin", "")) == "admin"
    assert Scope.from_text("admin") == Scope("admin", "")
    assert Scope.from_text("admin:") == Scope("admin", "")
    assert str(Scope.from_text("decide:" + JOB)) == "decide:" + JOB


@pytest.mark.parametrize(
    "role, resource, field, says",
    [
        ("owner", "", "role", "'owner'"),
        ("", JOB, "role", "''"),
        (None, JOB, "role", "None"),
        ("admin", "tenants/acme", "resource", "empty resource"),
        ("tenant_admin", "", "resource", "tenants/{tenant}"),
        ("tenant_admin", JOB, "resource", JOB),
        ("decide", "", "resource", "a job"),
        ("decide", "tenants/acme", "resource", "'tenants/acme'"),
        ("read", JOB + "/", "resource", JOB + "/"),
        ("read", "tenants/acme/capsules/x", "resource", "capsules/x"),
        ("feedback", "tenants/ac me/jobs/llm", "resource", "ac me"),
        ("feedback", "tenants/acme/jobs/" + "j" * 129, "resource", "jjj"),
        ("read", "tenants/acme/jobs/llm/capsules/c/extra", "resource", "extra"),
        ("read", 7, "resource", "int"),
    ],
)
def test_invalid_scopes_say_which_field_and_value(role, resource, field, says):
    with pytest.raises(InvalidScope) as caught:
        Scope.parse(role, resource)
    assert caught.value.field == field
    assert says in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_scope_from_text_rejects_non_strings():
    with pytest.raises(InvalidScope, match="string"):
        Scope.from_text(b"admin")


# --- principals --------------------------------------------------------------------------


def principal(*texts):
    return Principal("p", [Scope.from_text(t) for t in texts])


ALLOWS = [
    # (principal's scopes, role asked, resource, expected)
    (("admin",), "admin", "", True),
    (("admin",), "decide", CAPSULE, True),
    (("tenant_admin:tenants/acme",), "decide", CAPSULE, True),
    (("tenant_admin:tenants/acme",), "read", "tenants/acme", True),
    (("tenant_admin:tenants/acme",), "tenant_admin", "tenants/acme", True),
    (("tenant_admin:tenants/acme",), "feedback", JOB, True),
    (("tenant_admin:tenants/acme",), "admin", "", False),
    (("tenant_admin:tenants/acme",), "admin", "tenants/acme", False),
    (("tenant_admin:tenants/acme",), "read", "", False),
    (("tenant_admin:tenants/acme",), "read", "tenants/other/jobs/llm", False),
    (("tenant_admin:tenants/acme",), "read", "tenants/acmex/jobs/llm", False),
    (("decide:" + JOB,), "decide", JOB, True),
    (("decide:" + JOB,), "decide", CAPSULE, True),
    (("decide:" + JOB,), "decide", "tenants/acme/jobs/llmx/capsules/router", False),
    (("decide:" + JOB,), "feedback", CAPSULE, False),
    (("decide:" + JOB,), "read", CAPSULE, False),
    (("decide:" + JOB,), "decide", "tenants/acme", False),
    (("decide:" + JOB,), "decide", "", False),
    (("read:" + JOB,), "read", CAPSULE, True),
    (("read:" + CAPSULE,), "read", CAPSULE, True),
    (("read:" + CAPSULE,), "read", JOB, False),
    (("read:" + CAPSULE,), "read", CAPSULE + "x", False),
    (("read:" + JOB, "feedback:" + CAPSULE), "feedback", CAPSULE, True),
    (("read:" + JOB, "feedback:" + CAPSULE), "feedback", "tenants/acme/jobs/llm/capsules/other", False),
    # A malformed resource never widens a scope, even when it starts with one.
    (("decide:" + JOB,), "decide", JOB + "/../../other", False),
    (("decide:" + JOB,), "decide", JOB + "/capsules/", False),
    (("decide:" + JOB,), "decide", None, False),
]


@pytest.mark.parametrize("scopes, role, resource, expected", ALLOWS)
def test_principal_allows(scopes, role, resource, expected):
    assert principal(*scopes).allows(role, resource) is expected


def test_allows_rejects_an_unknown_role():
    with pytest.raises(InvalidScope, match="'write'"):
        principal("read:" + JOB).allows("write", JOB)


def test_dev_principal_is_admin():
    dev = Principal.dev()
    assert dev.is_admin and dev.allows("admin", "") and dev.may_grant(Scope("admin", ""))


GRANTS = [
    (("admin",), "admin", True),
    (("admin",), "tenant_admin:tenants/other", True),
    (("tenant_admin:tenants/acme",), "tenant_admin:tenants/acme", True),
    (("tenant_admin:tenants/acme",), "decide:" + JOB, True),
    (("tenant_admin:tenants/acme",), "read:" + CAPSULE, True),
    (("tenant_admin:tenants/acme",), "admin", False),
    (("tenant_admin:tenants/acme",), "tenant_admin:tenants/other", False),
    (("tenant_admin:tenants/acme",), "read:tenants/acmex/jobs/llm", False),
    (("decide:" + JOB,), "decide:" + JOB, False),
    (("decide:" + JOB,), "decide:" + CAPSULE, False),
    (("read:" + JOB,), "read:" + CAPSULE, False),
]


@pytest.mark.parametrize("scopes, granted, expected", GRANTS)
def test_may_grant(scopes, granted, expected):
    assert principal(*scopes).may_grant(Scope.from_text(granted)) is expected


def test_may_manage_needs_every_scope(tmp_path):
    store = TokenStore(tmp_path / "tokens.json", None)
    inside, _ = store.create([Scope.from_text("decide:" + JOB)], 60, "in", "admin-key")
    mixed, _ = store.create([Scope.from_text("decide:" + JOB), Scope.from_text("read:tenants/b/jobs/j")], 60)
    acme_admin = principal("tenant_admin:tenants/acme")
    assert acme_admin.may_manage(inside)
    assert not acme_admin.may_manage(mixed)
    assert principal("admin").may_manage(mixed)
    assert not principal("decide:" + JOB).may_manage(inside)


# --- the token store ---------------------------------------------------------------------

SECRET_FORM = re.compile(r"syn_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")


def test_create_authenticate_and_persist_only_hashes(tmp_path):
    clock = Clock()
    path = tmp_path / "state" / "tokens.json"
    store = TokenStore(path, None, clock=clock)
    scopes = [Scope.from_text("decide:" + JOB), Scope.from_text("read:" + JOB)]
    info, secret = store.create(scopes, 3600, "router bot", "tokens/0123456789abcdef")
    assert SECRET_FORM.fullmatch(secret) and secret[4:20] == info.id
    assert info.name == f"tokens/{info.id}"
    assert (info.create_time, info.expire_time, info.revoke_time) == (int(clock.now), int(clock.now) + 3600, None)
    assert (info.display_name, info.creator, info.scopes) == ("router bot", "tokens/0123456789abcdef", tuple(scopes))

    who = store.authenticate(secret)
    assert who.name == info.name and who.scopes == tuple(scopes)
    assert who.allows("decide", CAPSULE) and not who.allows("feedback", CAPSULE)

    text = path.read_text()
    assert secret not in text and secret[21:] not in text
    assert hashlib.sha256(secret.encode()).hexdigest() in text

    reopened = TokenStore(path, None, clock=clock)
    assert reopened.list() == [info]
    assert reopened.authenticate(secret).scopes == tuple(scopes)


def test_secrets_are_random_and_distinct(tmp_path):
    store = TokenStore(tmp_path / "tokens.json", None)
    secrets_made = {store.create([Scope("admin", "")], 60)[1] for _ in range(20)}
    assert len(secrets_made) == 20
    assert len({s[4:20] for s in secrets_made}) == 20


@pytest.mark.parametrize(
    "presented, reason",
    [
        (None, "missing"),
        ("", "missing"),
        ("Bearer", "malformed"),
        ("syn_0123456789abcdef_short", "malformed"),
        ("syn_0123456789abcdef_" + "A" * 43, "unknown"),
    ],
)
def test_bad_credentials(tmp_path, presented, reason):
    store = TokenStore(tmp_path / "tokens.json", ADMIN_KEY)
    store.create([Scope("admin", "")], 60)
    with pytest.raises(Unauthenticated) as caught:
        store.authenticate(presented)
    assert caught.value.reason == reason


def test_a_wrong_secret_for_a_real_id_reads_as_unknown_and_is_not_echoed(tmp_path):
    store = TokenStore(tmp_path / "tokens.json", None)
    _, secret = store.create([Scope("admin", "")], 60)
    forged = secret[:21] + ("B" if secret[21] != "B" else "C") + secret[22:]
    with pytest.raises(Unauthenticated) as caught:
        store.authenticate(forged)
    assert caught.value.reason == "unknown"
    assert forged[21:] not in str(caught.value) and secret[21:] not in str(caught.value)


def test_revocation_applies_to_the_next_call_and_persists(tmp_path):
    clock = Clock()
    path = tmp_path / "tokens.json"
    store = TokenStore(path, None, clock=clock)
    info, secret = store.create([Scope.from_text("read:" + JOB)], 0, "x")
    assert store.authenticate(secret).name == info.name
    clock.now += 5
    revoked = store.revoke(info.id)
    assert revoked.revoke_time == int(clock.now) and revoked.id == info.id
    with pytest.raises(Unauthenticated) as caught:
        store.authenticate(secret)
    assert caught.value.reason == "revoked" and info.name in str(caught.value)
    assert store.list() == []
    assert store.list(show_inactive=True) == [revoked]
    clock.now += 5
    assert store.revoke(info.id) == revoked  # a second revoke keeps the first time
    reopened = TokenStore(path, None, clock=clock)
    with pytest.raises(Unauthenticated, match="revoked"):
        reopened.authenticate(secret)


def test_revoke_errors(tmp_path):
    store = TokenStore(tmp_path / "tokens.json", None)
    with pytest.raises(UnknownToken) as caught:
        store.revoke("0123456789abcdef")
    assert isinstance(caught.value, LookupError) and "tokens/0123456789abcdef" in str(caught.value)
    for bad in ("tokens/0123456789abcdef", "0123", "0123456789ABCDEF", 7):
        with pytest.raises(InvalidTokenRequest) as caught:
            store.revoke(bad)
        assert caught.value.field == "name"
    assert not (tmp_path / "tokens.json").exists()


def test_expiry_applies_at_once(tmp_path):
    clock = Clock()
    store = TokenStore(tmp_path / "tokens.json", None, clock=clock)
    info, secret = store.create([Scope.from_text("decide:" + JOB)], 10)
    clock.now = info.expire_time - 0.001
    assert store.authenticate(secret).name == info.name
    assert store.list() == [info]
    clock.now = info.expire_time
    with pytest.raises(Unauthenticated) as caught:
        store.authenticate(secret)
    assert caught.value.reason == "expired"
    assert store.list() == [] and store.list(show_inactive=True) == [info]


def test_ttl_bounds(tmp_path):
    clock = Clock()
    store = TokenStore(tmp_path / "tokens.json", None, clock=clock)
    scopes = [Scope("admin", "")]
    assert store.create(scopes, 0)[0].expire_time - int(clock.now) == DEFAULT_TTL_SECONDS == 30 * 86400
    assert store.create(scopes, 1)[0].expire_time - int(clock.now) == 1
    assert store.create(scopes, 365 * 86400)[0].expire_time - int(clock.now) == MAX_TTL_SECONDS
    before = store.list(show_inactive=True)
    for ttl in (-1, 365 * 86400 + 1, 1.5, True, "60", None):
        with pytest.raises(InvalidTokenRequest) as caught:
            store.create(scopes, ttl)
        assert caught.value.field == "ttl_seconds"
    assert store.list(show_inactive=True) == before


@pytest.mark.parametrize(
    "scopes, display_name, field",
    [
        ([], "x", "scopes"),
        (["admin"], "x", "scopes"),
        ("admin", "x", "scopes"),
        ([Scope("admin", "")] * 2 + [Scope.from_text(f"read:tenants/t/jobs/j{i}") for i in range(64)], "x", "scopes"),
        ([Scope("admin", "")], "line\nbreak", "display_name"),
        ([Scope("admin", "")], "x" * 257, "display_name"),
        ([Scope("admin", "")], 5, "display_name"),
    ],
)
def test_invalid_create_requests_store_nothing(tmp_path, scopes, display_name, field):
    path = tmp_path / "tokens.json"
    store = TokenStore(path, None)
    with pytest.raises(InvalidTokenRequest) as caught:
        store.create(scopes, 60, display_name)
    assert caught.value.field == field and field in str(caught.value)
    assert store.list(show_inactive=True) == [] and not path.exists()


def test_duplicate_scopes_are_kept_once(tmp_path):
    store = TokenStore(tmp_path / "tokens.json", None)
    scope = Scope.from_text("read:" + JOB)
    info, _ = store.create([scope, scope], 60)
    assert info.scopes == (scope,)


def test_a_failed_write_changes_nothing(tmp_path):
    directory = tmp_path / "state"
    path = directory / "tokens.json"
    store = TokenStore(path, None)
    info, secret = store.create([Scope.from_text("read:" + JOB)], 60)
    # The directory turns into a file: every later write fails.
    path.unlink()
    directory.rmdir()
    directory.write_text("not a directory")
    with pytest.raises(OSError):
        store.create([Scope("admin", "")], 60)
    with pytest.raises(OSError):
        store.revoke(info.id)
    assert store.list(show_inactive=True) == [info]
    assert store.authenticate(secret).name == info.name


def test_concurrent_creates_all_persist(tmp_path):
    path = tmp_path / "tokens.json"
    store = TokenStore(path, None)
    made = []

    def create_some():
        for _ in range(5):
            made.append(store.create([Scope.from_text("decide:" + JOB)], 60))

    threads = [threading.Thread(target=create_some) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reopened = TokenStore(path, None)
    assert {i.id for i in reopened.list()} == {info.id for info, _ in made}
    for _, secret in made:
        reopened.authenticate(secret)


def test_authenticate_is_fast(tmp_path):
    store = TokenStore(tmp_path / "tokens.json", ADMIN_KEY)
    for _ in range(50):
        store.create([Scope.from_text("decide:" + JOB)], 60)
    _, secret = store.create([Scope.from_text("decide:" + JOB)], 60)
    rounds = 5000
    started = time.perf_counter()
    for _ in range(rounds):
        store.authenticate(secret)
    per_call = (time.perf_counter() - started) / rounds
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} us per authenticate"


# --- the admin key -----------------------------------------------------------------------


def test_admin_key_authenticates_as_admin(tmp_path):
    store = TokenStore(tmp_path / "tokens.json", ADMIN_KEY)
    who = store.authenticate(ADMIN_KEY)
    assert who.name == "admin-key" and who.is_admin and who.allows("admin", "")
    with pytest.raises(Unauthenticated):
        store.authenticate(ADMIN_KEY + "x")
    with pytest.raises(Unauthenticated):
        store.authenticate(ADMIN_KEY[:-1])
    assert ADMIN_KEY not in repr(vars(store))


def test_no_admin_key_means_none_works(tmp_path):
    store = TokenStore(tmp_path / "tokens.json", None)
    with pytest.raises(Unauthenticated):
        store.authenticate(ADMIN_KEY)


@pytest.mark.parametrize("key", ["short", "k" * 31, b"k" * 40])
def test_admin_key_must_be_long_enough(tmp_path, key):
    with pytest.raises(InvalidConfig, match="admin key"):
        TokenStore(tmp_path / "tokens.json", key)


# --- a damaged tokens file ---------------------------------------------------------------


def _valid_document(tmp_path):
    path = tmp_path / "tokens.json"
    store = TokenStore(path, None)
    store.create([Scope.from_text("read:" + JOB)], 60)
    return path, json.loads(path.read_text())


def test_truncated_file_is_named(tmp_path):
    path, _ = _valid_document(tmp_path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(TokenFileCorrupt) as caught:
        TokenStore(path, None)
    assert str(path) in str(caught.value) and "not valid JSON" in str(caught.value)


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda d: d.update(format=2), "format-1"),
        (lambda d: d.update(tokens={}), "'tokens' must be a list"),
        (lambda d: d["tokens"][0].update(scopes=[["root", ""]]), "token #0"),
        (lambda d: d["tokens"][0].update(secret_sha256="abcd"), "token #0"),
        (lambda d: d["tokens"][0].update(id="xyz"), "token #0"),
        (lambda d: d["tokens"][0].update(expire_time="soon"), "token #0"),
        (lambda d: d["tokens"][0].pop("creator"), "token #0"),
        (lambda d: d["tokens"].append(dict(d["tokens"][0])), "appears twice"),
    ],
)
def test_damaged_file_is_named(tmp_path, damage, says):
    path, document = _valid_document(tmp_path)
    damage(document)
    path.write_text(json.dumps(document))
    with pytest.raises(TokenFileCorrupt) as caught:
        TokenStore(path, None)
    assert str(path) in str(caught.value) and says in str(caught.value)


# --- failed authentications per peer -----------------------------------------------------


def test_failed_auth_limiter_blocks_after_max_failures_in_the_window():
    clock = Clock(100.0)
    limiter = FailedAuthLimiter(max_failures=3, window_seconds=60, clock=clock)
    for _ in range(2):
        limiter.record_failure("ipv4:1.2.3.4:5")
        clock.now += 10
    assert limiter.blocked("ipv4:1.2.3.4:5") == 0.0
    limiter.record_failure("ipv4:1.2.3.4:5")  # at 120: failures at 100, 110, 120
    assert limiter.blocked("ipv4:1.2.3.4:5") == pytest.approx(40.0)
    assert limiter.blocked("ipv4:9.9.9.9:5") == 0.0
    clock.now = 159.5
    assert limiter.blocked("ipv4:1.2.3.4:5") == pytest.approx(0.5)
    clock.now = 160.0  # the failure at 100 left the window: two remain
    assert limiter.blocked("ipv4:1.2.3.4:5") == 0.0
    limiter.record_failure("ipv4:1.2.3.4:5")  # 110, 120, 160
    assert limiter.blocked("ipv4:1.2.3.4:5") == pytest.approx(10.0)


def test_failed_auth_limiter_memory_is_bounded():
    clock = Clock(0.0)
    limiter = FailedAuthLimiter(max_failures=2, window_seconds=60, max_peers=3, clock=clock)
    for peer in "abcde":
        limiter.record_failure(peer)
        limiter.record_failure(peer)
    assert len(limiter) == 3
    assert limiter.blocked("a") == 0.0 and limiter.blocked("e") == pytest.approx(60.0)
    clock.now = 61.0
    assert limiter.blocked("e") == 0.0 and len(limiter) == 2  # forgotten once quiet


@pytest.mark.parametrize(
    "kwargs", [{"max_failures": 0}, {"max_failures": 2.5}, {"window_seconds": 0}, {"window_seconds": float("nan")},
               {"max_peers": 0}]
)
def test_failed_auth_limiter_rejects_bad_settings(kwargs):
    with pytest.raises(InvalidConfig):
        FailedAuthLimiter(**kwargs)
