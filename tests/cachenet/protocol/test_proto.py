"""The committed generated code in cachenet/protocol/{v1,oip} must match what proto/ generates."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_generated_code_is_up_to_date(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*"))
    assert generated, "gen_proto.py wrote nothing"
    stale = [str(rel) for rel in generated
             if (ROOT / rel).read_bytes() != (tmp_path / rel).read_bytes()]
    assert not stale, (f"committed generated code is stale: {stale}; run "
                       "python scripts/gen_proto.py and commit the result")
    committed = sorted(p.relative_to(ROOT) for name in ("v1", "oip")
                       for p in (ROOT / "cachenet" / "protocol" / name).glob("*_pb2*"))
    assert committed == generated, "cachenet/protocol holds files proto/ no longer generates"


def test_generated_code_imports_with_the_pinned_runtime():
    from cachenet.protocol.v1 import inference_pb2, inference_pb2_grpc

    assert inference_pb2.DESCRIPTOR.package == "cachenet.v1"
    assert hasattr(inference_pb2_grpc, "InferenceServiceStub")
