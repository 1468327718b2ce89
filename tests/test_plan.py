"""The plan: every security decision, checked where it is made."""

from __future__ import annotations

from meshfed.plan.build import build_plan, peerings
from meshfed.plan.model import FederationPlan
from meshfed.spec.model import Federation

WEB_CHECKOUT = "spiffe://web.bank.example/ns/shop/sa/checkout"
WEB_CATALOG = "spiffe://web.bank.example/ns/shop/sa/catalog"


def plan_of(fed: Federation) -> FederationPlan:
    return build_plan(fed, {m.name: f"PEM of {m.name}" for m in fed.spec.meshes})


def test_expose_nothing_by_default(bank: Federation) -> None:
    plan = plan_of(bank)
    served = {s.workload.ref for m in plan.meshes for s in m.ingress.servers}
    assert "cards/vault" not in served  # a workload nobody exported
    assert plan.mesh("web").ingress.servers == ()  # a mesh that exports nothing
    snis = {s.sni for s in plan.mesh("payments").ingress.servers}
    assert snis == {"tokenizer.payments.global", "ledger.payments.bank.global"}


def test_deny_by_default_and_exact_principals(bank: Federation) -> None:
    server = plan_of(bank).mesh("payments").ingress.server("tokenizer.payments.global")
    assert server is not None
    assert server.allows(WEB_CHECKOUT, "POST", "/v1/tokenize")
    assert not server.allows(WEB_CATALOG, "POST", "/v1/tokenize")  # other workload, same mesh
    assert not server.allows(WEB_CHECKOUT, "GET", "/v1/tokenize")  # method not allowed
    assert not server.allows(WEB_CHECKOUT, "POST", "/v1/tokenize/x")  # exact path only
    assert not server.allows(
        "spiffe://payments-dr.bank.example/ns/shop/sa/checkout", "POST", "/v1/tokenize"
    )  # same names, another mesh
    rule = server.allow[0]
    assert [str(p) for p in rule.principals] == [WEB_CHECKOUT]
    assert rule.consumer_mesh == "web"


def test_tcp_export_has_no_l7_rules(bank: Federation) -> None:
    server = plan_of(bank).mesh("payments").ingress.server("ledger.payments.bank.global")
    assert server is not None and server.protocol == "TCP"
    assert all(not r.methods and not r.paths for r in server.allow)


def test_failover_order_and_one_wire_host(bank: Federation) -> None:
    plan = plan_of(bank)
    (route,) = [i for i in plan.mesh("web").imports if i.protocol == "HTTP"]
    assert route.local_host == "tokenizer.shop.svc.cluster.local"
    assert route.wire_host == "tokenizer.payments.global"
    assert [(s.priority, s.mesh, s.port) for s in route.sources] == [
        (0, "payments", 15443),
        (1, "payments-dr", 15444),
    ]
    assert route.upstream_spiffe_ids == (
        "spiffe://payments.bank.example/ns/meshfed-system/sa/federation-ingress",
        "spiffe://payments-dr.bank.example/ns/meshfed-system/sa/federation-ingress",
    )
    # The failover target answers the primary's wire host, with the same authorization.
    alias = plan.mesh("payments-dr").ingress.server("tokenizer.payments.global")
    assert alias is not None and alias.alias_of == "tokenizer.payments-dr.global"
    assert alias.allows(WEB_CHECKOUT, "POST", "/v1/tokenize")
    assert not alias.allows(WEB_CATALOG, "POST", "/v1/tokenize")
    egress = plan.mesh("web").egress
    assert [r.wire_host for r in egress.routes] == sorted(
        i.wire_host for i in plan.mesh("web").imports
    )


def test_shared_root_trust(bank: Federation) -> None:
    plan = plan_of(bank)
    assert plan.peerings == ()
    ingress = plan.mesh("payments").ingress
    assert [(b.name, b.trust_domains) for b in ingress.trusted] == [("root", ("web.bank.example",))]
    assert plan.mesh("web").ingress.trusted == ()  # nobody may call web


def test_federated_trust_is_only_where_federated(partners: Federation) -> None:
    plan = plan_of(partners)
    globex = plan.mesh("globex")
    # globex's ingress trusts acme's root (its only consumer), not initech's, not its own.
    assert [(b.name, b.pem, b.trust_domains) for b in globex.ingress.trusted] == [
        ("acme", "PEM of acme", ("acme.example",))
    ]
    acme = plan.mesh("acme")
    # acme's sidecars verify the exporters' ingress gateways, each root for its own domain.
    assert [(b.name, b.trust_domains) for b in acme.workload_trust] == [
        ("acme", ("acme.example",)),
        ("globex", ("globex.example",)),
        ("initech", ("initech.example",)),
    ]
    assert [(b.name, b.trust_domains) for b in globex.workload_trust] == [
        ("globex", ("globex.example",))
    ]
    assert peerings(partners) == (
        ("acme", "globex"),
        ("acme", "initech"),
        ("globex", "acme"),
        ("initech", "acme"),
    )
    assert plan.peerings == peerings(partners)


def test_non_uniform_naming(partners: Federation) -> None:
    plan = plan_of(partners)
    routes = {r.local_host: r for r in plan.mesh("acme").imports}
    pay = routes["payments.checkout.svc.cluster.local"]
    assert pay.wire_host == "payments-api.globex.example"
    server = plan.mesh("globex").ingress.server("payments-api.globex.example")
    assert server is not None
    assert server.workload.fqdn == "charge-svc-v2.billing.svc.cluster.local"
    # Both acme and globex have accounts/withdraw; neither is exposed.
    assert all(s.workload.name != "withdraw" for m in plan.meshes for s in m.ingress.servers)


def test_plan_is_deterministic(bank: Federation) -> None:
    assert plan_of(bank) == plan_of(bank)
