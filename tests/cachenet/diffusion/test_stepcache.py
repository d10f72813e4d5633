"""Step caches: exact where they must be, scoped to one generation, counted honestly."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from cachenet.diffusion.generate import GenerateRequest, noise, sample
from cachenet.diffusion.samplers import SAMPLERS
from cachenet.diffusion.stepcache import POLICIES, open_session
from cachenet.diffusion.stepcache.deepcache import nonuniform_steps
from cachenet.diffusion.stepcache.l2c import reuse_schedule
from cachenet.exceptions import ConfigError
from tests.generating import ROUTER, tiny_models


@pytest.fixture(scope="module")
def models():
    ms = tiny_models()
    for m in ms.values():  # zero-initialised outputs would make every sample the same
        with torch.no_grad():
            for p in m.net.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return ms


def plain(model, steps: int, sampler: str, x: torch.Tensor, label: int) -> torch.Tensor:
    """The sampler on the bare network: no session, no policy."""
    y = torch.full((len(x),), label, dtype=torch.long)
    with torch.inference_mode():
        return SAMPLERS[sampler](lambda i, xi, t: model.net(xi, t, y), x, model.schedule, steps)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
@pytest.mark.parametrize(("arch", "policy", "params"), [
    ("unet", "none", {}), ("unet", "deepcache", {"interval": 1}),
    ("unet", "deepcache", {"interval": 1, "branch": 3}),
    ("dit", "none", {}), ("dit", "fora", {"interval": 1}),
    ("routed", "l2c", {"threshold": 0.0})])
def test_a_policy_that_never_caches_is_bit_identical_to_the_plain_sampler(
        models, arch, policy, params, sampler):
    model = models[arch]
    steps = 4
    x = noise((3, *model.image_shape), seed=7)
    want = plain(model, steps, sampler, x.clone(), label=2)
    got, session = sample(model, GenerateRequest(label=2, steps=steps, sampler=sampler,
                                                 policy=policy, params=params), x=x.clone())
    assert torch.equal(got, want)
    assert session.skipped() == 0.0
    assert session.macs == session.full_macs * steps


def test_the_shallow_path_computes_what_the_full_unet_computes(models):
    net = models["unet"].net
    x = torch.randn(2, 3, 16, 16)
    t, y = torch.tensor([10, 700]), torch.tensor([1, 10])
    with torch.no_grad():
        for branch in range(net.branches):
            full, deep = net(x, t, y, keep=branch)
            assert torch.equal(full, net(x, t, y))
            assert torch.equal(net.shallow(x, t, y, branch, deep), full)


def test_deepcache_reuses_between_full_steps_and_counts_what_it_ran(models):
    model = models["unet"]
    steps, n = 9, 3
    out, session = sample(model, GenerateRequest(steps=steps, policy="deepcache",
                                                 params={"interval": n, "branch": 0}),
                          x=noise((2, *model.image_shape), 1))
    macs = model.unit_macs()
    shallow = sum(macs[u] for u in model.net.shallow_units(0))
    full = sum(macs.values())
    assert session.full == {0, 3, 6}
    assert session.macs == 3 * full + 6 * shallow
    assert 0 < session.skipped() < 1
    plain_out = plain(model, steps, "ddim", noise((2, *model.image_shape), 1), model.num_classes)
    assert not torch.equal(out, plain_out)  # the cache changed something


def test_no_state_carries_over_between_generations(models):
    """Every generation opens its own session, and no policy may skip its first step
    (where a stale cache from another request would be read)."""
    model = models["unet"]
    req = GenerateRequest(steps=6, policy="deepcache", params={"interval": 3}, label=4)
    first, one = sample(model, req, x=noise((2, *model.image_shape), 11))
    sample(model, req, x=noise((2, *model.image_shape), 12))
    again, two = sample(model, req, x=noise((2, *model.image_shape), 11))
    assert one is not two and one.calls == two.calls == 6
    assert torch.equal(first, again)
    for name in POLICIES:
        with pytest.raises(ConfigError, match="full_first"):
            POLICIES[name].configure({"full_first": 0})


def test_full_first_and_last_steps_are_computed(models):
    model = models["dit"]
    session = open_session(model, "fora", {"interval": 10, "full_first": 2, "full_last": 2}, 8)
    ran = []
    x = noise((1, *model.image_shape), 0)
    y = torch.tensor([0])
    with torch.no_grad():
        for i in range(8):
            before = session.macs
            session.denoise(i, x, torch.tensor([500 - 50 * i]), y)
            ran.append(session.macs - before)
    full = session.full_macs
    assert [r == full for r in ran] == [True, True, False, False, False, False, True, True]


def test_the_l2c_schedule_is_a_pure_function_of_the_step():
    router = {"steps": 6, "period": 2,
              "betas": [[[1.0, 1.0], [1.0, 1.0]]] + [[[0.2, 0.8], [0.6, 0.1]]] * 5}
    first = [reuse_schedule(router, i, 0.5) for i in range(6)]
    assert first == [reuse_schedule(router, i, 0.5) for i in reversed(range(6))][::-1]
    assert first[0] == first[2] == first[4] == frozenset()  # full steps
    assert first[1] == frozenset({(0, "attn"), (1, "mlp")})
    assert reuse_schedule(router, 3, 0.0) == frozenset()
    assert reuse_schedule(router, 3, 1.0) == frozenset({(0, "attn"), (0, "mlp"), (1, "attn"),
                                                       (1, "mlp")})


def test_l2c_reuses_what_its_router_says_at_its_cache_steps(models):
    model = models["routed"]  # router: every attention reused at the odd steps
    _, session = sample(model, GenerateRequest(steps=4, policy="l2c",
                                               params={"threshold": 0.5}),
                        x=noise((1, *model.image_shape), 3))
    macs = model.unit_macs()
    attn = sum(v for k, v in macs.items() if k.endswith(".attn"))
    assert session.macs == 4 * session.full_macs - 2 * attn
    assert ROUTER["steps"] == 4


def test_nonuniform_full_steps_are_denser_near_the_centre():
    steps = nonuniform_steps(50, 17, center=15, power=1.4)
    assert len(steps) == 17 and steps[0] == 0 and len(set(steps)) == 17
    gaps = [b - a for a, b in itertools.pairwise(steps)]
    near = min(range(len(steps)), key=lambda k: abs(steps[k] - 15))
    assert max(gaps[max(0, near - 1):near + 1]) <= min(gaps[0], gaps[-1])


@pytest.mark.parametrize(("policy", "params", "arch", "names"), [
    ("deepcache", {"interval": 0}, "unet", "interval"),
    ("deepcache", {"branch": 99}, "unet", "branch"),
    ("deepcache", {"mode": "sideways"}, "unet", "mode"),
    ("deepcache", {"interval": 2.5}, "unet", "interval"),
    ("deepcache", {"interval": True}, "unet", "interval"),
    ("deepcache", {"speed": 3}, "unet", "speed"),
    ("deepcache", {}, "dit", "unet"),
    ("fora", {}, "unet", "dit"),
    ("l2c", {}, "dit", "router"),
    ("l2c", {"threshold": math.nan}, "routed", "threshold"),
    ("l2c", {"full_first": 0}, "routed", "full_first"),
    ("warp", {}, "unet", "warp"),
])
def test_bad_parameters_are_named(models, policy, params, arch, names):
    with pytest.raises(ConfigError, match=names):
        open_session(models[arch], policy, params, 4)


def test_l2c_refuses_a_step_count_its_router_was_not_trained_for(models):
    with pytest.raises(ConfigError, match="trained for 4 steps"):
        open_session(models["routed"], "l2c", {}, 10)


def test_every_registered_policy_has_a_config_and_archs():
    for name, cls in POLICIES.items():
        assert cls.name == name and cls.supports and cls.Config


@pytest.mark.parametrize(("router", "message"), [
    ({"steps": 4, "period": 2, "betas": [[[0.5, 0.5]]] * 4}, "must be 4 x 2 x 2"),
    ({"steps": 4, "period": 2, "betas": [[[2.0, 0.5]] * 2] * 4}, "in \\[0, 1\\]"),
    ({"steps": "4", "period": 2, "betas": []}, "no valid steps"),
    ({"steps": 4, "period": 2, "betas": "nope"}, "not a table"),
])
def test_a_malformed_router_is_refused_by_name(models, router, message):
    model = models["routed"]
    saved, model.l2c = model.l2c, router
    try:
        with pytest.raises(ConfigError, match=message):
            open_session(model, "l2c", {}, 4)
    finally:
        model.l2c = saved


@pytest.mark.parametrize(("fields", "message"), [
    ({"period": 3}, "period must be 2"), ({"steps": 1}, "steps must be at least 2"),
    ({"iters": 0}, "iters must be at least 1"), ({"lr": 0.0}, "lr > 0")])
def test_router_settings_that_cannot_be_trained_are_refused(models, fields, message):
    from cachenet.diffusion.stepcache.l2c import RouterConfig, train_router

    with pytest.raises(ConfigError, match=message):
        train_router(models["dit"], RouterConfig(**{"steps": 4, **fields}), progress=False)
