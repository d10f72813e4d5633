"""A bundle with another full model: for measuring the cloud's layer caches on it.

    python -m bench.swap_full --bundle bundles/cifar \\
        --full-weights ../shared/models/cifar10-resnet18.pt --out bundles/cifar-r18

The copy keeps the bundle's cache model, gate and files, and serves the given
checkpoint (a cachenet checkpoint: its spec inside) as its full model, without
test-time augmentation. Its cache model was distilled from, and its gate
calibrated against, the *original* full model: use the result for the cloud's
side only (``cachenet layercache --where cloud``, ``cachenet-cloud --layer-cache``),
as ``python -m bench.layercache --throughput-only`` does. Building a bundle around a
user's model properly is ``cachenet build --full ... --full-weights ...``, which
distils a new cache model (slow on a CPU for a ResNet-18 teacher).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True)
    p.add_argument("--full-weights", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from cachenet.core.bundle import repack, verify_bundle
    from cachenet.toolchain.models import count_macs, load_checkpoint, save_checkpoint

    m = verify_bundle(args.bundle)
    model, spec, _ = load_checkpoint(args.full_weights)
    shape = tuple(int(d) for d in m.input["shape"][1:])
    with tempfile.TemporaryDirectory() as tmp:
        path = args.full_weights  # as it is (our checkpoints may store fp16 weights) ...
        if spec.kwargs.pop("tta", "none") != "none":  # ... unless it serves flips
            path = Path(tmp) / "full.pt"
            save_checkpoint(path, model, spec, {"source": str(args.full_weights.name)})
        full = {**m.data["full_model"], "spec": spec.to_dict(), "tta": "none",
                "macs": count_macs(model, shape), "source": "swapped: " +
                args.full_weights.name, "files": ["full/model.pt"]}
        full.pop("layer_cache", None)
        out = repack(args.bundle, args.out, {"full/model.pt": path},
                     fields={"full_model": full, "name": f"{m.name}-{spec.arch}"})
    print(f"bundle {args.out} version {out.version}: full model {spec.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
