"""The ``distill`` pass and its data: a narrow LSNet learns zoo:digits-cnn, checkpoints resume,
and bad data or options are refused with the offending name."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgesmith import api as es
from edgesmith.errors import BadInputError, UsageError
from edgesmith.data.images import load_image_data

# A narrow LSNet-T: widths 16/32/64/96, depths 0/1/2/2 (RepVGG+SE, LS convolution and attention blocks).
STUDENT = "distill:student=lsnet_t,width=0.25,depth=0.25,image_size=32"


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """The teacher's own train/test split (the test images are unseen by both)."""
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    digits = datasets.load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    x_train, x_test, y_train, y_test = model_selection.train_test_split(
        images, digits.target, test_size=0.2, random_state=0, stratify=digits.target)
    path = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    small = path.with_name("small.npz")
    np.savez(small, x=images[:96], y=digits.target[:96])  # no test split: one is held out
    return path, small


@pytest.fixture(scope="module")
def teacher():
    return es.load("zoo:digits-cnn")


def test_narrow_lsnet_reaches_95_percent(digits_npz, teacher, tmp_path):
    """Acceptance: a narrow LSNet-style student distilled from digits-cnn, >= 95% test accuracy."""
    student = es.optimize(teacher, [f"{STUDENT},epochs=20"], defaults={"data": str(digits_npz[0])})
    report = student.passes[-1]["report"]
    kinds = {type(m).__name__ for m in student.module.modules()}
    assert {"LSConv", "Attention", "RepDepthwise"} <= kinds, kinds
    assert report["test_images"] == 360 and report["train_images"] == 1437
    assert report["accuracy"] >= 0.95, report
    assert report["agreement"] >= 0.95, report
    assert report["teacher_accuracy"] > 0.99
    assert report["student_params"] > report["teacher_params"] > 0
    # The student keeps the teacher's signature (8x8 in, 10 logits out) and exports like any variant.
    assert student.inputs == teacher.inputs
    out = student.run()
    assert out["logits"].shape == teacher.run()["logits"].shape
    bundle, parity = es.export(student, tmp_path, target="onnx")
    assert parity.passed and parity.tier == "verified"


def test_checkpoint_resume_and_refusals(digits_npz, teacher, tmp_path):
    ckpt = tmp_path / "ckpt"
    spec = f"{STUDENT},epochs=2,batch_size=32"
    defaults = {"data": str(digits_npz[1]), "checkpoint": str(ckpt)}
    first = es.optimize(teacher, [spec], defaults=defaults).passes[-1]["report"]
    assert (ckpt / "last.pt").is_file() and first["epochs_run"] == 2
    assert [h["epoch"] for h in first["history"]] == [1, 2]
    assert first["test_images"] == 19  # 20% of 96 held out by a seeded split

    with pytest.raises(UsageError, match="--resume"):  # never clobber a checkpoint silently
        es.optimize(teacher, [spec], defaults=defaults)
    resumed = es.optimize(teacher, [spec], defaults={**defaults, "resume": True}).passes[-1]["report"]
    assert resumed["epochs_run"] == 0 and resumed["history"] == first["history"]
    assert resumed["agreement"] == first["agreement"]  # the same student came back

    with pytest.raises(UsageError, match="epochs"):  # the schedule spans the epochs: another run
        es.optimize(teacher, [spec.replace("epochs=2", "epochs=3")], defaults={**defaults, "resume": True})


def test_resume_with_other_options_names_them(digits_npz, teacher, tmp_path):
    ckpt = tmp_path / "ckpt"
    defaults = {"data": str(digits_npz[1]), "checkpoint": str(ckpt)}
    es.optimize(teacher, [f"{STUDENT},epochs=1,batch_size=48"], defaults=defaults)
    with pytest.raises(UsageError, match="temperature"):
        es.optimize(teacher, [f"{STUDENT},epochs=1,batch_size=48,temperature=2"],
                    defaults={**defaults, "resume": True})
    again = es.optimize(teacher, [f"{STUDENT},epochs=1,batch_size=48,temperature=2"],
                        defaults={**defaults, "force": True})
    assert again.passes[-1]["report"]["epochs_run"] == 1
    with pytest.raises(UsageError, match="nothing to resume"):
        es.optimize(teacher, [f"{STUDENT},epochs=1"],
                    defaults={**defaults, "checkpoint": str(tmp_path / "none"), "resume": True})


def test_refusals(digits_npz, teacher, tmp_path):
    with pytest.raises(UsageError, match="needs data"):
        es.optimize(teacher, [STUDENT])
    with pytest.raises(UsageError, match="not a zoo backbone"):
        es.optimize(teacher, ["distill:student=digits-cnn"], defaults={"data": str(digits_npz[1])})
    with pytest.raises(UsageError, match="nosuch"):
        es.optimize(teacher, ["distill:student=nosuch"], defaults={"data": str(digits_npz[1])})
    with pytest.raises(UsageError, match="image_size=40"):
        es.optimize(teacher, ["distill:image_size=40"])
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 3, 8, 8), np.float32))
    with pytest.raises(BadInputError, match=r"\(8, 3, 8, 8\).*\(N, 1, 8, 8\)"):
        es.optimize(teacher, [STUDENT], defaults={"data": str(bad)})
    with pytest.raises(BadInputError, match="does not exist"):
        es.optimize(teacher, [STUDENT], defaults={"data": str(tmp_path / "missing")})


def test_defaults_reach_only_passes_with_the_option(digits_npz, teacher):
    """--data given to a reparam-only run does not break it."""
    folded = es.optimize(teacher, ["reparam"], defaults={"data": str(digits_npz[1]), "resume": True})
    assert folded.passes[-1]["name"] == "reparam"


def test_image_folder(tmp_path):
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        for i in range(5):
            pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
            image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    data = load_image_data(tmp_path, (1, 8, 8), test_fraction=0.2)
    assert data.classes == ["cat", "dog"]
    assert data.x_train.shape == (8, 1, 8, 8) and data.x_test.shape == (2, 1, 8, 8)
    assert data.x_train.dtype == np.float32 and 0 <= data.x_train.min() and data.x_train.max() <= 1
    assert sorted(np.concatenate([data.y_train, data.y_test]).tolist()) == [0] * 5 + [1] * 5
    rgb = load_image_data(tmp_path, (3, 16, 16))
    assert rgb.x_train.shape[1:] == (3, 16, 16)
    with pytest.raises(BadInputError, match="4-channel"):
        load_image_data(tmp_path, (4, 8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no class sub-folders"):
        load_image_data(tmp_path / "empty", (1, 8, 8))


def test_student_trains_deterministically(digits_npz, teacher):
    """Same seed, same student: a run is reproducible (and so is a resume)."""
    runs = [es.optimize(teacher, [f"{STUDENT},epochs=1,batch_size=48"], defaults={"data": str(digits_npz[1])})
            for _ in range(2)]
    x = torch.from_numpy(teacher.example["image"])
    with torch.no_grad():
        torch.testing.assert_close(runs[0].module(x), runs[1].module(x))


def test_cli_checkpoints_next_to_the_output_and_resumes(digits_npz, tmp_path, capsys):
    from edgesmith.cli import main

    out = tmp_path / "student.pt2"
    args = ["optimize", "zoo:digits-cnn", "-p", f"{STUDENT},epochs=1,batch_size=48",
            "--data", str(digits_npz[1]), "-o", str(out)]
    assert main(args) == 0
    assert out.is_file() and (tmp_path / "student.ckpt" / "last.pt").is_file()
    assert "test accuracy" in capsys.readouterr().out  # the figures, not the raw report
    assert main(args) == 3  # the output exists: refused without --force
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force", "--resume", "--json"]) == 0  # continues from the checkpoint: nothing left to run
    assert json.loads(capsys.readouterr().out)["passes"][0]["report"]["epochs_run"] == 0
    student = es.load(str(out))
    assert student.inputs[0].shape[1:] == (1, 8, 8) and student.run()["logits"].shape[-1] == 10
    assert [p["name"] for p in student.passes] == ["distill"]


@pytest.mark.parametrize("content", [b"not an npz\n", b"PK\x03\x04 truncated zip"], ids=["text", "truncated-zip"])
def test_data_that_is_not_an_npz_is_bad_input(tmp_path, content):
    from types import SimpleNamespace

    from edgesmith.training.loop import feeds_from

    bad = tmp_path / "bad.npz"
    bad.write_bytes(content)
    with pytest.raises(BadInputError, match="bad.npz"):
        load_image_data(bad, (1, 8, 8))
    with pytest.raises(BadInputError, match="bad.npz"):
        feeds_from(SimpleNamespace(inputs=[], example={}), str(bad), "pass 'distill'", seq_len=8)
