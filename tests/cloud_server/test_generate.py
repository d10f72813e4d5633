"""The generation service on a real grpc.aio server on loopback: images, progress, the
requests it refuses, deadlines, a full queue, and what it says it serves."""

from __future__ import annotations

import math
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from cachenet.diffusion.generate import GenerateRequest, Generator
from cachenet.diffusion.nets import save_checkpoint
from cachenet.exceptions import (
    CloudError,
    CloudOverloaded,
    CloudRejected,
    CloudTimeout,
    ConfigError,
)
from cachenet.protocol.client import GenerateClient, make_generate_request
from cachenet.protocol.v1 import generate_pb2 as gpb
from cachenet.protocol.v1 import generate_pb2_grpc as gpb_grpc
from cloud_server.__main__ import make_parser
from cloud_server.config import load_config
from cloud_server.generate import Stopper, load_generator
from tests.generating import CLASSES, serve, tiny_models
from tests.processes import start_cloud, wait_until

MAX_PENDING = 2


@pytest.fixture(scope="module")
def served():
    with serve(Generator(tiny_models(), max_count=4, max_image_steps=4000),
               max_generations=MAX_PENDING) as s:
        yield s


@pytest.fixture
def client(served):
    with GenerateClient(served.target) as c:
        yield c


@pytest.fixture
def stub(client):
    return gpb_grpc.GenerationServiceStub(client.channel)


@pytest.mark.parametrize("model,policy,params,guidance", [
    ("unet", "deepcache", {"interval": 2}, 1.0),
    ("dit", "fora", {"interval": 2}, 3.0),
    ("routed", "l2c", {"threshold": 0.5}, 1.0),
])
def test_images_match_the_generator_run_here(served, client, model, policy, params,
                                             guidance):
    fields = dict(model=model, label=3, count=3, seed=7, steps=4, policy=policy,
                  params=params, guidance=guidance)
    out = client.generate(timeout=30, request_id="r1", **fields)
    assert out.id == "r1" and out.model_name == model
    assert out.images.dtype == np.uint8 and out.images.shape == (3, 3, 16, 16)
    local = served.generator.run(GenerateRequest(**fields))
    np.testing.assert_array_equal(out.images, local.images)  # bit-identical on one machine
    t = out.timings
    assert (t["macs_per_image"], t["macs_full_per_image"]) == (local.macs, local.macs_full)
    assert t["macs_per_image"] < t["macs_full_per_image"]  # the step cache skipped some
    assert t["layers_skipped"] == pytest.approx(local.skipped) and 0 < t["layers_skipped"] < 1
    assert t["steps"] == 4 and 0 < t["compute_us"] <= t["total_us"]


def test_unconditional_and_defaults(client, served):
    out = client.generate(count=1, seed=1, steps=2, sampler="", policy="", timeout=30)
    assert out.model_name == "unet"  # the first model is the default
    local = served.generator.run(GenerateRequest(count=1, seed=1, steps=2))
    np.testing.assert_array_equal(out.images, local.images)
    assert out.timings["layers_skipped"] == 0.0


def test_progress_arrives_step_by_step_before_the_images(client, stub):
    seen = []
    out = client.generate(model="dit", count=1, steps=5, sampler="dpmpp-2m", timeout=30,
                          on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 5) for i in range(1, 6)] and out.images.shape[0] == 1
    messages = list(stub.Generate(make_generate_request(model="dit", steps=3, request_id="p"),
                                  timeout=30))
    kinds = [m.WhichOneof("payload") for m in messages]
    assert kinds == ["progress"] * 3 + ["result"] and {m.id for m in messages} == {"p"}
    assert [m.progress.done for m in messages[:3]] == [1, 2, 3]


def bad_requests() -> dict[str, tuple[gpb.GenerateRequest | bytes, str]]:
    def req(**fields):
        return make_generate_request(**{"steps": 2, **fields})

    no_value = req(policy="deepcache")
    no_value.params["interval"].SetInParent()
    good = req().SerializeToString()
    return {
        "unknown model": (req(model="sdxl"), "model: unknown diffusion model 'sdxl'"),
        "label too large": (req(label=10), "label must be in [0, 9]"),
        "negative label": (req(label=-1), "label must be in [0, 9]"),
        "count 0": (req(count=0), "count must be in [1, 4], got 0"),
        "count too large": (req(count=5), "count must be in [1, 4], got 5"),
        "steps 0": (req(steps=0), "steps must be in [1, 1000], got 0"),
        "seed too large": (req(seed=2**63), "seed must be in [0, 2^63)"),
        "unknown sampler": (req(sampler="euler"), "sampler must be one of"),
        "unknown policy": (req(policy="magic"), "policy must be one of"),
        "unknown param": (req(policy="deepcache", params={"speed": 2}),
                          "policy 'deepcache' has no parameter 'speed'"),
        "wrong param type": (req(policy="deepcache", params={"interval": "2"}),
                             "parameter 'interval' must be a int"),
        "param without value": (no_value, "params['interval'] has no value"),
        "NaN guidance": (req(guidance=math.nan), "guidance must be in [0, 20.0], got nan"),
        "guidance too large": (req(guidance=21.0), "guidance must be in [0, 20.0]"),
        "policy for another arch": (req(model="unet", policy="fora"),
                                    "policy 'fora' runs on ['dit'], not on a unet"),
        "l2c without router": (req(model="dit", policy="l2c"), "no trained router"),
        "l2c for other steps": (req(model="routed", policy="l2c", steps=5),
                                "router was trained for 4 steps, not 5"),
        "infinite power": (req(policy="deepcache", params={"mode": "nonuniform",
                                                           "power": math.inf}),
                           "parameter 'power' must be finite"),
        "huge power": (req(policy="deepcache", params={"mode": "nonuniform", "power": 1e300}),
                       "power must be in [1, 4.0]"),
        "NaN center": (req(policy="deepcache", params={"center": math.nan}),
                       "parameter 'center' must be finite"),
        "long mode": (req(policy="deepcache", params={"mode": "x" * 10_000}),
                      "parameter 'mode' is longer than 64 characters"),
        "long id": (gpb.GenerateRequest(id="i" * 1000, count=1, steps=2),
                    "id is longer than 128 characters"),
        "long model name": (req(model="m" * 10_000), "model_name is longer than 64"),
        "many params": (req(policy="deepcache", params={f"k{i}": 1 for i in range(100)}),
                        "params has 100 entries; at most 16"),
        "too much work": (req(count=4, steps=1000, guidance=2.0),
                          "count x steps (x2 with guidance) is 8000, more than the 4000"),
        "unknown field": (good + b"\xa0\x06\x01", "unknown field number(s) [100]"),
        "undecodable": (b"\xff\xff\xff garbage",
                        "does not decode as cachenet.v1.GenerateRequest"),
    }


def test_bad_requests_get_invalid_argument_naming_the_field(client, stub):
    raw = client.channel.unary_stream("/cachenet.v1.GenerationService/Generate",
                                      request_serializer=lambda b: b,
                                      response_deserializer=gpb.GenerateResponse.FromString)
    for name, (request, message) in bad_requests().items():
        with pytest.raises(grpc.RpcError) as err:
            list(raw(request, timeout=5) if isinstance(request, bytes)
                 else stub.Generate(request, timeout=5))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert message in err.value.details(), (name, err.value.details())
    with pytest.raises(CloudRejected, match="INVALID_ARGUMENT: count must be"):
        client.generate(count=0, steps=2, timeout=5)
    with pytest.raises(ConfigError, match="int, float or str"):  # refused before it leaves
        client.generate(policy="deepcache", params={"interval": True}, timeout=5)
    assert client.generate(steps=1, timeout=10).images.shape == (1, 3, 16, 16)


def test_a_deadline_stops_the_generation_and_the_server_goes_on(client, served):
    deadlines = served.service.counts["deadline"]
    # The accelerator is busy: the worker waits on it while the deadline passes.
    with served.generator._lock, pytest.raises(CloudTimeout, match="DEADLINE_EXCEEDED"):
        client.generate(count=4, steps=1000, timeout=0.5)
    # Free again, the worker starts the generation and stops it at its first step.
    wait_until(lambda: served.service.pending == 0, timeout=30)
    wait_until(lambda: served.service.counts["deadline"] == deadlines + 1, timeout=5)
    out = client.generate(count=1, steps=2, timeout=10)
    assert out.images.shape == (1, 3, 16, 16)


def test_a_full_queue_gets_resource_exhausted_and_leaving_callers_free_it(served, stub,
                                                                          client):
    counts = dict(served.service.counts)
    with served.generator._lock:  # nothing finishes while the queue is full
        calls = [stub.Generate(make_generate_request(count=1, steps=2), timeout=60)
                 for _ in range(MAX_PENDING)]
        wait_until(lambda: served.service.pending == MAX_PENDING, timeout=10)
        with pytest.raises(CloudOverloaded, match="RESOURCE_EXHAUSTED"):
            client.generate(steps=1, timeout=10)
        for call in calls:
            call.cancel()
        wait_until(lambda: served.service.counts["cancelled"] == counts["cancelled"] + 2)
    wait_until(lambda: served.service.pending == 0, timeout=30)
    assert served.service.counts["overloaded"] == counts["overloaded"] + 1
    assert client.generate(steps=1, timeout=10).images.shape[0] == 1


def test_generator_info_lists_the_models(client):
    info = client.info(timeout=5)
    models = {m.name: m for m in info.models}
    assert list(models) == ["unet", "dit", "routed"] and info.default_model == "unet"
    unet, dit, routed = models["unet"], models["dit"], models["routed"]
    assert (unet.arch, list(unet.image_shape), list(unet.classes)) == ("unet", [3, 16, 16],
                                                                        CLASSES)
    assert list(unet.policies) == ["deepcache", "none"]
    assert list(dit.policies) == ["fora", "none"] and not dit.l2c_router
    assert list(routed.policies) == ["fora", "l2c", "none"]
    assert (routed.l2c_router, routed.l2c_steps, routed.l2c_sampler) == (True, 4, "ddim")
    assert unet.max_steps == 1000 and unet.device == "cpu"
    assert list(info.samplers) == ["ddim", "dpmpp-2m"] and info.max_count == 4
    assert info.max_image_steps == 4000
    policies = {p.name: p for p in info.policies}
    assert policies["deepcache"].defaults["interval"].WhichOneof("value") == "int_value"
    assert policies["deepcache"].defaults["mode"].string_value == "uniform"
    assert policies["l2c"].defaults["threshold"].float_value == 0.5


def test_garbage_info_requests_get_invalid_argument(client):
    raw = client.channel.unary_unary("/cachenet.v1.GenerationService/GetGeneratorInfo",
                                     request_serializer=lambda b: b,
                                     response_deserializer=gpb.GeneratorInfo.FromString)
    with pytest.raises(grpc.RpcError) as err:
        raw(b"\xff\xff\xff garbage", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not decode as cachenet.v1.GeneratorInfoRequest" in err.value.details()


def test_reflection_names_the_service(client):
    refl = reflection_pb2_grpc.ServerReflectionStub(client.channel)
    replies = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
        list_services="")]), timeout=5))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"cachenet.v1.GenerationService", "cachenet.v1.InferenceService"} <= names


def test_why_a_generation_stops():
    closing = threading.Event()
    assert not Stopper(None, closing)() and not Stopper(time.monotonic() + 60, closing)()
    expired = Stopper(time.monotonic() - 1, closing)
    assert expired() and expired.status() == "DEADLINE_EXCEEDED"
    left = Stopper(None, closing)
    left.left.set()
    assert left() and left.status() == "CANCELLED"
    closing.set()
    assert Stopper(None, closing)() and Stopper(None, closing).status() == "UNAVAILABLE"


def test_shutdown_stops_a_running_generation():
    errors: list[Exception] = []

    def long(target: str) -> None:
        with GenerateClient(target) as c:
            try:
                c.generate(count=16, steps=1000, timeout=600)  # a minute if it ran through
            except CloudError as exc:
                errors.append(exc)

    with serve(Generator(tiny_models())) as s:
        caller = threading.Thread(target=long, args=(s.target,))
        caller.start()
        wait_until(lambda: s.service.pending == 1, timeout=10)
        time.sleep(0.1)
        started = time.monotonic()
    assert time.monotonic() - started < 30  # the worker stopped between two steps
    caller.join(10)
    assert len(errors) == 1 and s.service.pending == 0
    assert errors[0].code == "UNAVAILABLE"


def test_concurrent_requests_all_get_answers(client, served):
    """More callers than the queue admits: each gets its images or RESOURCE_EXHAUSTED."""
    outcomes: list[str] = []

    def one(seed: int) -> None:
        try:
            client.generate(count=1, steps=20, seed=seed, timeout=30)
            outcomes.append("ok")
        except CloudOverloaded:
            outcomes.append("overloaded")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(outcomes) == 5 and "ok" in outcomes


def test_diffusion_flags_name_checkpoints(tmp_path):
    def diffusion(argv, env=None):
        args = vars(make_parser().parse_args(["--bundle", "b", *argv]))
        args.pop("config")
        return {k: str(v) for k, v in load_config(environ=env or {}, **args).diffusion.items()}

    assert diffusion(["--diffusion", "a=x.pt", "--diffusion", "b=y.pt"]) == {
        "a": "x.pt", "b": "y.pt"}
    assert diffusion([], {"CACHENET_DIFFUSION": "a=x.pt,b=y.pt"}) == {"a": "x.pt", "b": "y.pt"}
    with pytest.raises(ConfigError, match="twice"):
        diffusion(["--diffusion", "a=x", "--diffusion", "a=y"])
    with pytest.raises(ConfigError, match=r"^--diffusion: expected NAME=PATH"):
        diffusion(["--diffusion", "no-equals"])
    models = tiny_models()
    save_checkpoint(tmp_path / "dit.pt", models["routed"])
    generator = load_generator({"d": tmp_path / "dit.pt"}, "cpu", max_count=2)
    assert generator.default == "d" and generator.max_count == 2
    assert generator.models["d"].l2c == models["routed"].l2c


@pytest.mark.slow
def test_the_cloud_daemon_serves_diffusion_checkpoints(digits_bundle, tmp_path):
    """``cachenet-cloud --diffusion NAME=PATH``: loaded, served, healthy, beside the
    classifier."""
    save_checkpoint(tmp_path / "unet.pt", tiny_models()["unet"])
    daemon = start_cloud(digits_bundle[0], tmp_path, "--diffusion", f"tiny={tmp_path / 'unet.pt'}")
    try:
        with GenerateClient(f"127.0.0.1:{daemon.info['port']}") as c:
            health = health_pb2_grpc.HealthStub(c.channel)
            resp = health.Check(health_pb2.HealthCheckRequest(
                service="cachenet.v1.GenerationService"), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            assert [m.name for m in c.info(timeout=5).models] == ["tiny"]
            out = c.generate(count=2, steps=2, label=1, timeout=60)
            assert out.images.shape == (2, 3, 16, 16) and out.model_name == "tiny"
    finally:
        assert daemon.stop() == 0


def test_compatible_requests_queued_together_run_as_one_batch():
    """Requests that differ only in label, count and seed share a sampler run; each
    gets the images its own request makes, and a request that differs runs alone."""
    generator = Generator(tiny_models(), max_count=16)
    fields = {"a": dict(label=1, count=2, seed=1), "b": dict(count=1, seed=2),
              "c": dict(label=5, count=3, seed=3), "other": dict(count=1, seed=4, steps=4)}
    results: dict[str, object] = {}
    with serve(generator, max_generations=8) as s, GenerateClient(s.target) as c:
        stub = gpb_grpc.GenerationServiceStub(c.channel)

        def one(name: str) -> None:
            results[name] = c.generate(**{"model": "unet", "steps": 3, **fields[name]},
                                       timeout=120)

        threads = [threading.Thread(target=one, args=(n,)) for n in fields]
        with generator._lock:  # the worker takes a first request and waits on the lock
            blocker = stub.Generate(make_generate_request(model="dit", steps=2), timeout=120)
            wait_until(lambda: s.service.pending == 1 and not s.service._jobs, timeout=10)
            for t in threads:
                t.start()
            wait_until(lambda: s.service.pending == 1 + len(fields), timeout=10)
        for t in threads:
            t.join(120)
        assert len(list(blocker)) == 3  # its two steps and its images
        assert s.service.counts["batches"] == 3  # the blocker, a + b + c, other
    for name in ("a", "b", "c"):
        got = results[name]
        assert got.timings["batch_images"] == 6  # 2 + 1 + 3
        alone = generator.run(GenerateRequest(model="unet", steps=3, **fields[name]))
        assert got.images.shape == alone.images.shape
        assert np.abs(got.images.astype(int) - alone.images.astype(int)).max() <= 2
    assert results["other"].timings["batch_images"] == 1


def test_a_cancelled_request_leaves_the_queue_at_once():
    generator = Generator(tiny_models())
    with serve(generator, max_generations=8) as s, GenerateClient(s.target) as c:
        stub = gpb_grpc.GenerationServiceStub(c.channel)
        with generator._lock:
            first = stub.Generate(make_generate_request(steps=2), timeout=60)
            wait_until(lambda: s.service.pending == 1 and not s.service._jobs, timeout=10)
            queued = stub.Generate(make_generate_request(steps=2, seed=1), timeout=60)
            wait_until(lambda: len(s.service._jobs) == 1, timeout=10)
            queued.cancel()
            wait_until(lambda: not s.service._jobs and s.service.pending == 1, timeout=10)
        assert len(list(first)) == 3


def test_shutdown_answers_unavailable():
    """Closing ends a running generation at its next step, and one queued behind it,
    each with UNAVAILABLE (retry elsewhere), not with silence."""
    generator = Generator(tiny_models())
    with serve(generator, max_generations=8) as s, GenerateClient(s.target) as c:
        stub = gpb_grpc.GenerationServiceStub(c.channel)
        with generator._lock:
            calls = [stub.Generate(make_generate_request(steps=50, seed=i), timeout=60)
                     for i in range(2)]
            wait_until(lambda: s.service.pending == 2, timeout=10)
            s.service.close()
        codes = []
        for call in calls:
            with pytest.raises(grpc.RpcError) as err:
                list(call)
            codes.append(err.value.code())
        assert codes == [grpc.StatusCode.UNAVAILABLE] * 2
        assert s.service.counts["unavailable"] == 2
