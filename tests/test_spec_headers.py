"""``keepRequestHeaders``: an export may keep a stripped header only where that is safe, and the
spec check says where and why not (meshfed.spec.headers)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshfed.spec.errors import SpecError
from meshfed.spec.headers import CALLER_HEADER, STRIPPED_HEADERS, keep_problem, kind_of
from meshfed.spec.load import parse_spec
from meshfed.workspace import plan_of
from test_spec import BANK, broken, line_of

TOKENIZER_HOST = "      host: tokenizer.payments.global\n"
LEDGER = "      workload: cards/ledger\n"


def _keep(headers: str, anchor: str = TOKENIZER_HOST) -> tuple[str, str]:
    return anchor, anchor + f"      keepRequestHeaders: {headers}\n"


def _problems(headers: str, anchor: str = TOKENIZER_HOST) -> list[str]:
    return broken(_keep(headers, anchor))


def test_a_host_override_may_be_kept_and_the_plan_carries_it() -> None:
    text = BANK.replace(*_keep("[X-Forwarded-Host, forwarded]"), 1)
    plan = plan_of(parse_spec(text, "bank.yaml"))
    boundary = plan.mesh("payments").boundary
    assert boundary.kept_request_headers == (
        ("tokenizer.payments.global", ("forwarded", "x-forwarded-host")),
    )
    removed = boundary.request_headers_removed_for("tokenizer.payments.global")
    assert "x-forwarded-host" not in removed and "forwarded" not in removed
    assert "x-forwarded-host" in boundary.request_headers_removed_for("ledger.payments.bank.global")
    # payments-dr's export of the tokenizer keeps nothing, also on the same wire host.
    dr = plan.mesh("payments-dr").boundary
    assert "x-forwarded-host" in dr.request_headers_removed_for("tokenizer.payments.global")


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ("[X-HTTP-Method-Override]", "would let a caller run another method"),
        ("[x-original-url]", "would let a caller reach another path"),
        ("[x-forwarded-for]", "carries network addresses"),
        ("[x-middleware-subrequest]", "never a caller's to set"),
        ("[x-forwarded-client-cert]", "can never be kept"),
        (f"[{CALLER_HEADER}]", "can never be kept"),
        ("[x-custom-header]", "is not a header the ingress strips"),
        ('["bad header"]', "is not an HTTP header name"),
        ("[x-forwarded-host, X-Forwarded-Host]", "is already listed"),
    ],
)
def test_each_refused_header_is_located_and_explained(headers: str, message: str) -> None:
    (problem,) = _problems(headers)
    line = line_of("keepRequestHeaders", BANK.replace(*_keep(headers), 1))
    assert problem.startswith(f"bank.yaml:{line}: spec.exports[0].keepRequestHeaders["), problem
    assert message in problem and "Fix: " in problem


def test_method_and_path_overrides_are_fine_where_nothing_limits_them() -> None:
    # The ledger export (TCP) has no methods or paths, but it is TCP: no headers at all.
    (problem,) = _problems("[x-http-method-override]", LEDGER)
    assert "the export is TCP" in problem
    assert keep_problem("x-http-method-override", False, False, "HTTP") is None
    assert keep_problem("x-original-url", True, False, "HTTP") is None
    assert keep_problem("x-http-method-override", False, True, "HTTP") is None


def test_every_stripped_header_has_a_kind_and_the_catalogue_is_lower_case() -> None:
    assert len(set(STRIPPED_HEADERS)) == len(STRIPPED_HEADERS)
    for name in STRIPPED_HEADERS:
        assert name == name.lower() and kind_of(name) is not None
        assert kind_of(name.upper()) == kind_of(name)
    assert kind_of("content-type") is None


@given(st.text(alphabet=string.printable, max_size=30))
def test_any_name_is_kept_or_refused_with_a_reason(name: str) -> None:
    for methods, paths in ((False, False), (True, True)):
        problem = keep_problem(name, methods, paths, "HTTP")
        if problem is None:
            assert kind_of(name) in ("method", "path", "host")
            assert not (methods and kind_of(name) in ("method", "path"))
        else:
            assert problem.message and problem.fix


def test_a_refused_header_changes_nothing() -> None:
    with pytest.raises(SpecError):
        parse_spec(BANK.replace(*_keep("[x-forwarded-for]"), 1), "bank.yaml")
