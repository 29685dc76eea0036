"""Fine-tuning on a folder of real video files: scan, split, decode + cache, train, resume, export, evaluate, bad data.

The folder is written with PyAV (H.264 .mp4 and VP8 .webm at 128x96 15 fps, 96x96 10 fps and
112x84 12 fps) from :mod:`model.training.datasets.patterns`: three of the motion data set's
classes at other speeds on held-out pictures, so the bundled backbone has the features and two
short epochs on a CPU are enough; the harder recipe (motions it never learnt) is measured in
docs/training.md.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import model
from model.io.weights import read_metadata
from model.training import evaluate as evaluate_cli
from model.training import train as train_cli
from model.training.datasets import folder as folder_module
from model.training.datasets.folder import (
    ClipCache,
    DataError,
    DecodeSpec,
    VideoError,
    decode_video,
    scan_folder,
    split_folder,
)
from model.training.datasets.patterns import write_pattern_folder
from model.training.finetune import augment_clips

CLASSES = ("zoom in", "tilt down", "shake")  # a mirror keeps all three: the default flips are on
HELD_OUT_ACCURACY = 0.8  # asserted; 1.0 measured (15 clips, 2 epochs, 2 loaded cores)
CAMERAS = ((128, 96, 15.0), (96, 96, 10.0), (112, 84, 12.0))  # (width, height, fps) of clip i % 3
SECONDS = 2.2  # 11 frames at the model's 5 fps: windows of 10 have room to move


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("folder")
    write_pattern_folder(root / "train", CLASSES, clips_per_class=10, seed=1, seconds=SECONDS, cameras=CAMERAS)
    write_pattern_folder(root / "val", CLASSES, clips_per_class=5, seed=2, seconds=SECONDS, cameras=CAMERAS)
    return {"train": root / "train", "val": root / "val", "cache": root / "cache", "root": root}


def run_train(args: list[str], capsys) -> tuple[int, str]:
    code = train_cli.main(args)
    return code, capsys.readouterr().err


# ----------------------------------------------------------------------------- the whole path


@pytest.mark.slow  # about 3 minutes on 2 loaded cores: two short epochs of A0 at 64 px, then an evaluation
def test_fine_tune_from_motion_resume_export_serve_and_evaluate(folders, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--train", str(folders["train"]), "--val", str(folders["val"]), "--out", str(out),
              "--cache-dir", str(folders["cache"]), "--init", "motion", "--freeze-epochs", "1", "--seed", "0"]
    code, err = run_train([*common, "--epochs", "1"], capsys)
    assert code == 0, err
    assert "new head for 3 classes, re-initialised: classifier.logits.bias, classifier.logits.weight" in err
    assert "train: 30 of 30 videos usable" in err and "val: 15 of 15 videos usable" in err
    for name in CLASSES:  # the class balance table: train, val
        assert any(line.split() == [*name.split(), "10", "5"] for line in err.splitlines()), name
    first = torch.load(out / "last.pt", weights_only=True)
    assert first["epoch"] == 1 and json.loads(first["history"])[0]["head_only"] is True

    code, err = run_train([*common, "--epochs", "2", "--resume"], capsys)
    assert code == 0, err
    assert f"resumed from {out / 'last.pt'} at epoch 1" in err
    assert "30 from the cache" in err  # decoded once, by the first run
    history = json.loads(torch.load(out / "last.pt", weights_only=True)["history"])
    assert [record["epoch"] for record in history] == [1, 2] and history[1]["head_only"] is False
    assert history[-1]["val_acc"] >= HELD_OUT_ACCURACY, history

    weights = out / "movinet_a0_stream_train.safetensors"
    meta = read_metadata(weights)
    assert meta["labels"] == sorted(CLASSES) and meta["num_classes"] == 3
    assert (meta["info"]["input_size"], meta["info"]["frame_rate"], meta["info"]["clip_frames"]) == (64, 5.0, 10)
    assert meta["extra"]["reinitialised"] == ["classifier.logits.bias", "classifier.logits.weight"]
    assert meta["extra"]["init"].endswith("movinet_a0_stream_motion.safetensors")

    # What the service does: load by name and file, then one frame at a time.
    net = model.create_model("movinet_a0_stream", weights=str(weights))
    video = folders["val"] / "zoom in" / "zoom_in_000.mp4"
    frames = decode_video(video, DecodeSpec(net.info.frame_rate, 64, net.info.eval_min_size, 100))
    state = None
    with torch.no_grad():
        for frame in frames[: net.info.clip_frames]:
            x = torch.from_numpy(frame).permute(2, 0, 1)[None, :, None].float() / 255.0  # (1, 3, 1, H, W)
            logits, state = net(x, state)
    assert net.labels[int(logits.argmax())] == "zoom in"

    eval_out = tmp_path / "eval"
    code = evaluate_cli.main(["--data", str(folders["val"]), "--weights", str(weights), "--out", str(eval_out),
                              "--cache-dir", str(folders["cache"])])
    printed = capsys.readouterr().out
    assert code == 0, printed
    results = json.loads((eval_out / "results.json").read_text())
    # The same decode and the same centre windows as the training's validation, streamed frame by frame.
    assert results["top1"] == pytest.approx(history[-1]["val_acc"])
    assert results["clips"] == 15 and len(results["recall"]) == 3 and results["top5"] == 1.0
    assert f"top-1 {results['top1']:.4f}  top-3 1.0000  (15 videos" in printed
    assert "recall" in printed and "truth \\ predicted" in printed
    assert (eval_out / "confusion.png").stat().st_size > 1000
    assert np.asarray(results["confusion"]).sum() == 15


# ----------------------------------------------------------------------------- pieces


def touch_videos(root: Path, counts: dict[str, int], suffix: str = ".mp4") -> None:
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            (root / name / f"{index:02d}{suffix}").write_bytes(b"x")


def test_split_is_fixed_per_class_and_holds_out_at_least_one(tmp_path):
    touch_videos(tmp_path, {"a": 10, "b": 3, "c": 2})
    (tmp_path / "a" / "notes.txt").write_text("not a video")
    scan = scan_folder(tmp_path)
    assert scan.classes == ["a", "b", "c"] and scan.counts() == [10, 3, 2]
    assert [p.name for p in scan.ignored] == ["notes.txt"]
    train, val = split_folder(scan, 0.2, seed=0)
    held = np.bincount([v.label for v in val], minlength=3).tolist()
    assert held == [2, 1, 1]  # 20 %, at least one, never the whole class
    assert not {v.path for v in train} & {v.path for v in val}
    assert split_folder(scan, 0.2, seed=0) == (train, val)
    assert split_folder(scan, 0.2, seed=1)[1] != val
    touch_videos(tmp_path, {"d": 5})  # a new class leaves the others' split alone
    _, val_more = split_folder(scan_folder(tmp_path), 0.2, seed=0)
    assert [v.path for v in val_more if v.label < 3] == [v.path for v in val]


def test_cache_decodes_once_and_again_after_the_file_changes(folders, tmp_path, monkeypatch):
    calls = []
    real_decode = folder_module.decode_video

    def counting(path, spec):
        calls.append(Path(path).name)
        return real_decode(path, spec)

    monkeypatch.setattr(folder_module, "decode_video", counting)
    video = tmp_path / "clip.webm"
    shutil.copy(folders["val"] / "shake" / "shake_001.webm", video)
    cache, spec = ClipCache(tmp_path / "cache"), DecodeSpec(5.0, 32, 32, 100)
    assert not cache.contains(video, spec)
    first = cache.load(video, spec)
    assert first.dtype == np.uint8 and first.shape[1:] == (32, 32, 3) and len(first) == 11  # 2.2 s at 5 fps
    assert np.array_equal(cache.load(video, spec), first) and calls == ["clip.webm"]
    assert not cache.contains(video, DecodeSpec(5.0, 48, 48, 100))  # other settings, another entry

    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: a new key
    assert not cache.contains(video, spec)
    assert np.array_equal(cache.load(video, spec), first) and calls == ["clip.webm", "clip.webm"]

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"")
    with pytest.raises(VideoError, match="empty file"):
        cache.load(broken, spec)
    with pytest.raises(VideoError, match="empty file"):  # remembered, not decoded again
        cache.load(broken, spec)
    assert calls.count("broken.mp4") == 1
    shutil.copy(video, broken)  # fixed: its size and mtime change, so it is decoded again
    assert len(cache.load(broken, spec)) == 11

    entries = sorted(cache.entries(), key=lambda p: p.stat().st_mtime_ns)
    cache.max_bytes = entries[-1].stat().st_size  # room for the most recently used entry only
    assert cache.evict() == len(entries) - 1 and cache.entries() == [entries[-1]]


def test_augmentation_keeps_a_still_clip_still_and_the_shape(folders):
    still = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (1, 1, 80, 80, 3), dtype=np.uint8))
    batch = still.expand(4, 6, 80, 80, 3)
    out = augment_clips(batch, 64, torch.Generator().manual_seed(0), flip=True, jitter=0.25)
    assert out.shape == (4, 3, 6, 64, 64) and 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(out[:, :, :1].expand_as(out), out)  # one crop, flip and jitter per clip: no motion added
    assert not torch.equal(out[0], out[1])
    again = augment_clips(batch, 64, torch.Generator().manual_seed(0), flip=True, jitter=0.25)
    assert torch.equal(out, again)


# ----------------------------------------------------------------------------- bad data


def small_folder(folders, root: Path, per_class: int = 2) -> Path:
    for name in ("zoom in", "shake"):
        (root / name).mkdir(parents=True)
        for path in sorted((folders["train"] / name).iterdir())[:per_class]:
            shutil.copy(path, root / name / path.name)
    return root


def assert_refused(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    message = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(message) == 1, err
    for fragment in fragments:
        assert fragment in message[0], message[0]


def test_bad_folders_are_refused_with_one_message(folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MOVINET_CACHE_DIR", str(tmp_path / "no-weights-here"))
    data = small_folder(folders, tmp_path / "data")
    args = ["--out", str(tmp_path / "run"), "--cache-dir", str(folders["cache"])]

    (data / "walk").mkdir()
    (data / "walk" / "readme.txt").write_text("not a video")
    assert_refused(*run_train(["--data", str(data), *args], capsys), "hold no videos", "'walk'")
    shutil.rmtree(data / "walk")

    lonely = tmp_path / "lonely"
    shutil.copytree(data / "shake", lonely / "shake")
    assert_refused(*run_train(["--data", str(lonely), *args], capsys), "only one class folder", "'shake'")
    assert_refused(*run_train(["--data", str(tmp_path / "missing"), *args], capsys), "is not a folder")
    assert_refused(*run_train(["--data", str(lonely / "shake"), *args], capsys), "holds no class folders")

    (data / "shake" / "only.mp4").write_bytes(b"")
    single = tmp_path / "single"
    shutil.copytree(data, single)
    for path in list((single / "zoom in").iterdir())[1:]:
        path.unlink()
    assert_refused(*run_train(["--data", str(single), *args], capsys), "fewer than 2 videos", "'zoom in' (1)")

    for path in (data / "shake").iterdir():  # every training video of a class unreadable
        path.write_bytes(b"garbage, not a video" * 10)
    code, err = run_train(["--train", str(data), "--val", str(data), *args], capsys)
    assert_refused(code, err, "no usable training video left", "'shake'")
    assert "skipped 3 unreadable" in err

    good = small_folder(folders, tmp_path / "good")
    assert_refused(*run_train(["--data", str(good), "--init", "kinetics600", *args], capsys),
                   "no weights 'kinetics600' for movinet_a0_stream", "python -m model.weights fetch")
    assert_refused(*run_train(["--data", str(good), "--init", str(tmp_path / "nope.safetensors"), *args], capsys),
                   "does not exist")
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage errors exit with 2 as well
        train_cli.main(["--data", "motion", "--init", "motion"])
    assert exit_info.value.code == 2 and "only apply to a folder" in capsys.readouterr().err


def test_unreadable_empty_and_non_video_files_are_skipped_and_counted(folders, tmp_path, capsys):
    data = small_folder(folders, tmp_path / "data", per_class=3)
    (data / "shake" / "empty.mp4").write_bytes(b"")
    (data / "shake" / "garbage.webm").write_bytes(np.random.default_rng(0).bytes(2000))
    (data / "zoom in" / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    (data / "zoom in" / "text.mov").write_text("a text file with a video suffix")
    code, err = run_train(["--train", str(data), "--val", str(data), "--out", str(tmp_path / "run"),
                           "--cache-dir", str(tmp_path / "cache"), "--epochs", "1", "--max-steps", "1",
                           "--frames", "6", "--size", "32", "--amp"], capsys)  # --amp: bf16 autocast on a CPU
    assert code == 0, err
    assert "Traceback" not in err
    assert f"ignored 1 file(s) that are not videos (.mp4, .webm, .mkv, .avi, .mov): {data / 'zoom in' / 'photo.jpg'}" in err
    assert f"skipped {data / 'shake' / 'empty.mp4'}: empty file (0 bytes)" in err
    assert f"skipped {data / 'shake' / 'garbage.webm'}: unreadable" in err
    assert f"skipped {data / 'zoom in' / 'text.mov'}: unreadable" in err
    assert "train: 6 of 9 videos usable" in err and "skipped 1 empty file, 2 unreadable" in err
    meta = read_metadata(tmp_path / "run" / "movinet_a0_stream_data.safetensors")
    assert meta["extra"]["train_clips"] == 6 and (meta["info"]["input_size"], meta["info"]["clip_frames"]) == (32, 6)

    code = evaluate_cli.main(["--data", str(folders["val"]), "--weights", str(tmp_path / "run" / "movinet_a0_stream_data.safetensors"),
                              "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert_refused(code, err, "'tilt down' are not among the model's 2 classes")


def test_scan_refuses_classes_outside_the_labels(tmp_path):
    touch_videos(tmp_path, {"a": 1, "z": 1})
    with pytest.raises(DataError, match="'z' are not among"):
        scan_folder(tmp_path, classes=["a", "b"])
    assert scan_folder(tmp_path, classes=["z", "b", "a"]).counts() == [1, 0, 1]
