"""Bad input ends with one line on stderr naming the problem, and exit code 2."""

from __future__ import annotations

import pytest
import torch

from quantsweep.cli.main import main

BASE = ["sweep", "--imgsz", "96", "--max-images", "4"]

ORT_CPU_RUNS = "target ort-cpu runs int7-int8, int7-uint8, int8-int8, int8-uint8 only"


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("quantsweep: error: ")
    return err[0]


def test_missing_checkpoint(capsys, tiny_data, tmp_path) -> None:
    line = _error(capsys, [*BASE, "--model", str(tmp_path / "missing.pt"), "--images", str(tiny_data)])
    assert "checkpoint not found" in line and "missing.pt" in line


def test_non_ultralytics_checkpoint(capsys, tiny_data, tmp_path) -> None:
    path = tmp_path / "resnet.pt"
    torch.save({"state_dict": {}}, path)
    assert "not an Ultralytics detection checkpoint" in _error(
        capsys, [*BASE, "--model", str(path), "--images", str(tiny_data)]
    )


def test_unreadable_image_is_named(capsys, tiny_checkpoint, tmp_path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    line = _error(capsys, [*BASE, "--model", str(tiny_checkpoint), "--images", str(folder)])
    assert "unreadable image" in line and "broken.jpg" in line


def test_empty_image_set(capsys, tiny_checkpoint, tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    assert "no images found" in _error(
        capsys, [*BASE, "--model", str(tiny_checkpoint), "--images", str(tmp_path / "empty")]
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--imgsz", "100"], "not a positive multiple of 32"),
        (["--weights", "int2"], "valid: int8, int7, int4, fp8"),
        (["--acts", "bf16"], "valid: fp16, int8, fp8"),
        (["--granularity", "per_group"], "valid: per_layer, per_channel"),
        (["--weights", "fp8", "--acts", "int8"], "no requested combination can be quantized"),
        (["--layers", "model.99.*"], "matches none"),
        (["--device", "gpu"], "unknown device 'gpu'; valid: cpu, cuda, cuda:N"),
        (["--device", "cpu:1"], "unknown device 'cpu:1'"),
        (["--device", "cuda:x"], "unknown device 'cuda:x'"),
        (["--compute-dtype", "bfloat16"], "unknown compute dtype 'bfloat16'; valid: float32, float16"),
    ],
)
def test_bad_options(capsys, tiny_checkpoint, tiny_data, extra, expected) -> None:
    line = _error(capsys, [*BASE, "--model", str(tiny_checkpoint), "--images", str(tiny_data), *extra])
    assert expected in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is absent")
def test_cuda_without_cuda(capsys, tiny_checkpoint, tiny_data) -> None:
    line = _error(
        capsys, [*BASE, "--model", str(tiny_checkpoint), "--images", str(tiny_data), "--device", "cuda"]
    )
    assert "CUDA is not available" in line


def test_resume_of_a_non_run_directory(capsys, tmp_path) -> None:
    assert "not a sweep run directory" in _error(capsys, ["sweep", "--resume", str(tmp_path)])


def test_layers_command_lists_layers(capsys, tiny_checkpoint) -> None:
    assert main(["layers", "--model", str(tiny_checkpoint), "--imgsz", "64"]) == 0
    out = capsys.readouterr().out
    assert "model.0.conv" in out and "64 quantizable layers" in out


def test_a_target_that_cannot_run_the_request_stops_before_any_work(
    capsys, tiny_checkpoint, tiny_data, tmp_path
) -> None:
    run = ["run", "--model", str(tiny_checkpoint), "--images", str(tiny_data), "--data", str(tiny_data)]
    line = _error(
        capsys, [*run, "--imgsz", "96", "--target", "ort-cpu", "--low", "fp8", "--out", str(tmp_path)]
    )
    assert ORT_CPU_RUNS in line and "--low fp8" in line
    assert "unknown target 'gpu'" in _error(capsys, [*run, "--target", "gpu", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # refused before a run directory was made


@pytest.mark.parametrize(
    ("flag", "value", "what"),
    [
        ("--weight-method", "adaround", "weight method"),
        ("--weight-symmetry", "skewed", "weight symmetry"),
        ("--calib", "kl", "calibration method"),
    ],
)
def test_unknown_quantizer_option_names_the_valid_ones(capsys, tiny_data, flag, value, what) -> None:
    line = _error(capsys, [*BASE, "--images", str(tiny_data), flag, value])
    assert f"unknown {what} '{value}'" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where CUDA is absent")
def test_an_unavailable_target_named_explicitly_stops_before_any_work(capsys, tiny_data, tmp_path) -> None:
    line = _error(capsys, ["run", "--target", "tensorrt", "--out", str(tmp_path)])
    assert "target tensorrt is not available here: no CUDA GPU" in line
    evaluate = ["evaluate", "--candidates", str(tmp_path / "none"), "--data", str(tiny_data)]
    line = _error(capsys, [*evaluate, "--target", "tensorrt", "--out", str(tmp_path)])
    assert "target tensorrt is not available here: no CUDA GPU" in line
    assert not list(tmp_path.iterdir())


def test_materialize_writer_choice_is_checked_first(capsys, tmp_path) -> None:
    materialize = ["materialize", "--schemes", str(tmp_path), "--out", str(tmp_path)]
    assert "unknown writer 'trt'" in _error(capsys, [*materialize, "--writer", "trt"])
    line = _error(capsys, [*materialize, "--writer", "modelopt", "--target", "ort-cpu"])
    assert "--writer modelopt writes tensorrt artifacts only" in line
    assert not list(tmp_path.iterdir())


def test_an_unexpected_failure_is_one_line_and_its_traceback_goes_to_the_run_log(
    capsys, monkeypatch, tiny_checkpoint, tiny_data, tmp_path
) -> None:
    def explode(*_args, **_kwargs):
        raise RuntimeError("layer model.2.cv2.conv: the runtime failed\nsecond line stays in the log")

    monkeypatch.setattr("quantsweep.stages.sweep_stage.execute", explode)
    argv = [*BASE, "--model", str(tiny_checkpoint), "--images", str(tiny_data), "--out", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the progress bar's first frame, then the line
    (line,) = [e for e in err if e.startswith("quantsweep:")]
    assert err[-1] == line
    assert line.startswith(
        "quantsweep: error: sweep failed: RuntimeError: layer model.2.cv2.conv: the runtime failed"
    )
    (log,) = tmp_path.glob("*_layer_sensitivity/*/run.log")
    assert line.endswith(f"(traceback in {log})")
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "second line stays in the log" in text
    assert "sweeping" in text  # the run's own INFO log is there too


def test_a_second_command_in_the_same_process_does_not_write_into_the_first_runs_log(
    capsys, monkeypatch, tiny_checkpoint, tiny_data, tmp_path
) -> None:
    def explode(*_args, **_kwargs):
        raise RuntimeError("second command's failure")

    argv = [*BASE, "--model", str(tiny_checkpoint), "--images", str(tiny_data), "--layers", "model.0.*"]
    assert main([*argv, "--out", str(tmp_path / "first")]) == 0
    monkeypatch.setattr("quantsweep.stages.sweep_stage.execute", explode)
    assert main([*argv, "--out", str(tmp_path / "second")]) == 2
    (first,) = (tmp_path / "first").glob("*/*/run.log")
    (second,) = (tmp_path / "second").glob("*/*/run.log")
    assert "second command's failure" in second.read_text()
    assert str(second.parent) in second.read_text()  # "sweeping ... into <its run dir>"
    assert str(first.parent) in first.read_text() and str(second.parent) not in first.read_text()


def test_a_target_that_cannot_run_the_swept_schemes_stops_before_any_work(capsys, tmp_path) -> None:
    line = _error(
        capsys, ["run", "--target", "ort-cpu", "--weights", "int4", "--acts", "fp16", "--out", str(tmp_path)]
    )
    assert ORT_CPU_RUNS in line and "int4-fp16/per_channel" in line
    assert not list(tmp_path.iterdir())  # no run directory was started
    # and the size target runs INT4 weight-only only
    line = _error(
        capsys, ["run", "--target", "size", "--weights", "int8", "--acts", "int8", "--out", str(tmp_path)]
    )
    assert "target size runs" in line
