"""``cachenet diffusion train`` and ``router``: a model trained once, cached, routed."""

from __future__ import annotations

import json

import numpy as np

from cachenet.cli import main
from cachenet.diffusion.nets import load_checkpoint

TINY_UNET = ["--option", "channels=8", "--option", "mults=[1,2]", "--option", "blocks=1",
             "--option", "attn_at=[]"]
TINY_DIT = ["--option", "width=24", "--option", "heads=2", "--option", "depth=2",
            "--option", "patch=4"]


def test_train_writes_a_checkpoint_and_the_same_command_again_is_cached(tmp_path, capsys):
    out = tmp_path / "unet.pt"
    args = ["diffusion", "train", "--dataset", "digits", "--arch", "unet", "--out", str(out),
            "--steps", "3", "--batch-size", "8", "--no-progress", *TINY_UNET]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("trained: unet")
    model = load_checkpoint(out)
    assert model.image_shape == (1, 8, 8) and len(model.classes) == 10
    assert model.meta["training"]["steps"] == 3
    stamp = out.stat().st_mtime_ns
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("cached: unet")
    assert out.stat().st_mtime_ns == stamp
    assert list(tmp_path.iterdir()) == [out]  # the resumable state went with the run
    assert main([*args[:-len(TINY_UNET)], *TINY_UNET[:-2], "--option", "blocks=2"]) == 0
    assert capsys.readouterr().out.startswith("trained: unet")  # other options: trained anew


def test_router_stores_an_l2c_schedule_in_the_checkpoint(tmp_path, capsys):
    out = tmp_path / "dit.pt"
    assert main(["diffusion", "train", "--dataset", "digits", "--arch", "dit", "--out", str(out),
                 "--steps", "2", "--batch-size", "8", "--no-progress", *TINY_DIT]) == 0
    assert main(["diffusion", "router", "--model", str(out), "--steps", "4", "--iters", "4",
                 "--no-progress"]) == 0
    assert "router for 4 ddim steps" in capsys.readouterr().out
    router = load_checkpoint(out).l2c
    assert router is not None and np.array(router["betas"]).shape == (4, 2, 2)


def test_bad_options_and_models_get_one_line(tmp_path, capsys):
    assert main(["diffusion", "train", "--dataset", "digits", "--arch", "dit", "--out",
                 str(tmp_path / "x.pt"), "--option", "nope=1"]) == 2
    assert "no option(s) ['nope']" in capsys.readouterr().err
    unet = tmp_path / "u.pt"
    assert main(["diffusion", "train", "--dataset", "digits", "--arch", "unet", "--out",
                 str(unet), "--steps", "1", "--batch-size", "4", "--no-progress",
                 *TINY_UNET]) == 0
    assert main(["diffusion", "router", "--model", str(unet), "--steps", "4"]) == 2
    assert "diffusion transformers" in capsys.readouterr().err


def test_generate_here_from_a_checkpoint_writes_the_grid(tmp_path, capsys):
    from PIL import Image

    from cachenet.diffusion.nets import save_checkpoint
    from tests.generating import tiny_models

    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, tiny_models()["unet"])
    out = tmp_path / "grid.png"
    assert main(["generate", "--checkpoint", str(ckpt), "--label", "class3", "--count", "2",
                 "--steps", "3", "--policy", "deepcache", "--param", "interval=2", "--out",
                 str(out), "--json"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(printed[-1])
    assert summary["model"] == "tiny" and summary["shape"] == [2, 3, 16, 16]
    assert 0 < summary["macs_per_image"] < summary["macs_full_per_image"]
    assert Image.open(out).size == (2 + 2 * 18, 2 + 18)
    assert main(["generate", "--checkpoint", str(ckpt), "--label", "zebra", "--out",
                 str(out)]) == 2
    assert "not a class of model 'tiny'" in capsys.readouterr().err
