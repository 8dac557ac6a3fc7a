"""Where sampling and training run: the device choice, the precision that really ran, trackers, and the
sampling pipeline of a training run on ``accelerator.device``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_args as _tiny_args

from ddpm_hub import devices
from ddpm_hub.cli import main as cli_main
from ddpm_hub.config import ConfigError, config_from_argv


def tiny_args(out, *extra):
    """test_train's tiny run, with step counts every core sampler but ddpm accepts (ddim takes at least 8)."""
    return _tiny_args(out, "--sample_inference_steps", "8", "--final_inference_steps", "8", *extra)


@pytest.fixture
def only(monkeypatch):
    """``only("mps")``: pretend that, besides the CPU, exactly these accelerators are available."""

    def set_available(*kinds: str, cuda_count: int = 1) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: "cuda" in kinds)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda_count if "cuda" in kinds else 0)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: "mps" in kinds)
        monkeypatch.setattr(torch.xpu, "is_available", lambda: "xpu" in kinds)

    return set_available


@pytest.mark.parametrize(
    ("kinds", "best"),
    [
        (("cuda", "xpu", "mps"), "cuda"),
        (("xpu", "mps"), "xpu"),
        (("mps",), "mps"),
        ((), "cpu"),
    ],
)
def test_auto_takes_the_best_available_device(only, kinds, best):
    only(*kinds)
    assert devices.select_device("auto") == torch.device(best)
    assert devices.select_device(None) == torch.device(best)
    assert devices.available_devices() == [k for k in ("cuda", "xpu", "mps") if k in kinds] + ["cpu"]


@pytest.mark.parametrize("kind", ["cuda", "mps", "xpu"])
def test_a_named_device_is_used_when_available_and_refused_when_not(only, kind):
    only(kind)
    assert devices.select_device(kind) == torch.device(kind)
    assert devices.select_device("cpu") == torch.device("cpu")
    only()
    with pytest.raises(ValueError, match=rf"device '{kind}' is not available here \(available: cpu\)"):
        devices.select_device(kind)


def test_a_cuda_index_beyond_the_devices_and_an_unknown_kind_are_refused(only):
    only("cuda", cuda_count=2)
    assert devices.select_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="has 2 CUDA device"):
        devices.select_device("cuda:2")
    with pytest.raises(ValueError, match="unknown device 'tpu'; choose one of auto, cpu, cuda, mps, xpu"):
        devices.select_device("tpu")


def test_sample_with_an_unavailable_device_is_one_line(only, tmp_path):
    only()
    with pytest.raises(SystemExit) as exc:
        cli_main(["sample", "spaces/default-model", "--device", "cuda", "--out", str(tmp_path / "g.png")])
    message = str(exc.value)
    assert message.startswith("ddpm-hub sample: error: --device: device 'cuda' is not available here")
    assert "\n" not in message and not (tmp_path / "g.png").exists()


def test_sample_says_where_it_sampled(tmp_path, capsys):
    out = tmp_path / "g.png"
    args = ["sample", "spaces/default-model", "--num-images", "1", "--sampler", "ddim", "--steps", "8"]
    assert cli_main([*args, "--out", str(out), "--device", "cpu"]) == 0
    assert "(sampled on cpu)" in capsys.readouterr().out and out.is_file()


# ------------------------------------------------------------------------------------- in training


@pytest.mark.filterwarnings("ignore:.*to a meta parameter")
@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_sampling_pipeline_puts_every_parameter_and_buffer_on_the_device(backbone):
    """On a machine without an accelerator, the meta device shows that nothing stays on the CPU (DiT holds a
    non-persistent buffer, its position embedding)."""
    from diffusers.training_utils import EMAModel

    from ddpm_hub import DDPMHubScheduler
    from ddpm_hub.plugins import get_backbone
    from ddpm_hub.train import sampling_pipeline

    kwargs = {
        "unet": dict(
            sample_size=8,
            in_channels=1,
            base_channels=8,
            channel_mult=(1,),
            attention_resolutions=(8,),
            norm_num_groups=4,
        ),
        "dit": dict(sample_size=8, in_channels=1, hidden_size=16, depth=1, num_heads=2),
    }[backbone]
    model = get_backbone(backbone)(**kwargs)
    ema = EMAModel(model.parameters())
    pipe = sampling_pipeline(model, ema, DDPMHubScheduler(), torch.device("meta"))
    tensors = list(pipe.unet.parameters()) + list(pipe.unet.buffers())
    assert len(tensors) > 3 and {t.device.type for t in tensors} == {"meta"}
    assert pipe.device == torch.device("meta") and all(t.dtype == torch.float32 for t in tensors)
    assert backbone == "unet" or list(pipe.unet.buffers())


def test_a_run_samples_on_the_accelerator_device_and_logs_grids_through_the_tracker(tmp_path, monkeypatch):
    import ddpm_hub.train as train_module

    built = []
    real = train_module.sampling_pipeline

    def spy(model, ema, scheduler, device, *args, **kwargs):
        pipe = real(model, ema, scheduler, device, *args, **kwargs)
        built.append((device, pipe))
        return pipe

    monkeypatch.setattr(train_module, "sampling_pipeline", spy)
    captured = {}
    real_accelerator = train_module._train

    def keep_accelerator(config, dataset, accelerator, *args, **kwargs):
        captured["device"] = accelerator.device
        return real_accelerator(config, dataset, accelerator, *args, **kwargs)

    monkeypatch.setattr(train_module, "_train", keep_accelerator)
    run = train_module.train(
        config_from_argv(
            tiny_args(tmp_path / "run", "--log_with", "tensorboard", "--checkpointing_steps", "0")
        )
    )
    device = captured["device"]
    # grids at step 2 and the final samples (the grid model is reused), and the final pipeline
    assert len(built) == 3
    for used, pipe in built:
        tensors = list(pipe.unet.parameters()) + list(pipe.unet.buffers())
        assert used == device and {t.device for t in tensors} == {device}
    info = json.loads((run / "train_info.json").read_text())
    assert info["sample_device"] == str(device)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert "samples" in events.Tags()["images"]  # through accelerate's TensorBoardTracker.log_images
    assert [e.step for e in events.Images("samples")] == [2]
    assert "samples/seconds" in events.Tags()["scalars"]


# ------------------------------------------------------------------------------------ precision


def _train_subprocess(out: Path, env_extra: dict, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env_extra}
    args = tiny_args(out, "--max_steps", "2", "--sample_steps", "0", "--checkpointing_steps", "0", *extra)
    return subprocess.Popen(
        [sys.executable, "-m", "ddpm_hub.train", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_launchers_precision_holds_unless_the_config_sets_one(tmp_path):
    runs = {
        "launcher": (tmp_path / "a", {"ACCELERATE_MIXED_PRECISION": "bf16"}, ()),
        "explicit": (tmp_path / "b", {"ACCELERATE_MIXED_PRECISION": "bf16"}, ("--mixed_precision", "no")),
        "fp16-cpu": (tmp_path / "c", {}, ("--mixed_precision", "fp16")),
    }
    procs = {name: _train_subprocess(out, env, *extra) for name, (out, env, extra) in runs.items()}
    outputs = {name: proc.communicate(timeout=600) for name, proc in procs.items()}
    for name, proc in procs.items():
        assert proc.returncode == 0, outputs[name][1][-3000:]
    info = {name: json.loads((out / "train_info.json").read_text()) for name, (out, _, _) in runs.items()}

    assert info["launcher"]["mixed_precision"] == "bf16"  # no mixed_precision in the config
    assert "ACCELERATE_MIXED_PRECISION" in info["launcher"]["mixed_precision_source"]
    assert "mixed precision bf16 (from the launcher: ACCELERATE_MIXED_PRECISION" in outputs["launcher"][0]
    assert 0 < info["launcher"]["final_loss"] < 10
    # the run's config.yaml records the precision it resolved, so that --resume continues in it
    assert "mixed_precision: bf16" in (runs["launcher"][0] / "config.yaml").read_text()

    assert (
        info["explicit"]["mixed_precision"] == "no"
    )  # --mixed_precision no (a string, not YAML's false) wins
    assert info["explicit"]["mixed_precision_source"] == "from the training config"

    # fp16 on a CPU: accelerate trains in float32; the banner and train_info say so
    assert info["fp16-cpu"]["mixed_precision"] == "no"
    assert info["fp16-cpu"]["mixed_precision_requested"] == "fp16"
    assert "fp16 was asked for" in outputs["fp16-cpu"][0] and "trains in float32" in outputs["fp16-cpu"][0]


@pytest.mark.parametrize(
    ("flags", "native"),
    [({"avx2", "fma"}, False), ({"avx512f", "avx512_bf16"}, True), ({"amx_tile", "amx_bf16"}, True)],
)
def test_native_bf16_on_the_cpu_follows_its_flags(monkeypatch, flags, native):
    # torch's own checks, as torch.cpu names them, answering for a CPU with these flags
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: "avx512_bf16" in flags, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: "amx_tile" in flags, raising=False)
    assert devices.native_bf16("cpu") is native
    assert devices.native_bf16("mps") is False  # not measured there: auto keeps float32


@pytest.mark.parametrize(
    ("value", "launcher", "gpu", "native", "expected", "source"),
    [
        ("auto", None, False, True, "bf16", "auto: this CPU has AVX512-BF16 or AMX"),
        ("auto", None, False, False, "no", "auto: no native bf16 on this cpu, so float32"),
        # a CUDA GPU with bf16: float32 with TF32 (bf16 autocast measured no faster on an H200)
        ("auto", None, True, True, "no", "auto: float32 with TF32 tensor cores on CUDA"),
        ("bf16", None, True, True, "bf16", "from the training config"),  # configs/cifar10.yaml's way
        ("auto", "fp16", False, True, "fp16", "from the launcher"),
        (
            "auto",
            "no",
            False,
            True,
            "no",
            "from the launcher",
        ),  # accelerate launch's own default is a choice too
        (None, None, False, True, "no", "null in the training config"),
        ("no", "bf16", False, True, "no", "from the training config"),
        ("bf16", None, False, False, "bf16", "from the training config"),
    ],
)
def test_auto_precision_is_the_launchers_else_bf16_on_a_native_bf16_cpu_else_float32(
    monkeypatch, only, value, launcher, gpu, native, expected, source
):
    from ddpm_hub import train as train_module

    if gpu:
        only("cuda")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    else:
        only()  # no accelerator: the CPU trains
    if launcher is None:
        monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    monkeypatch.setattr(devices, "native_bf16", lambda kind: native and kind in ("cpu", "cuda"))
    config = config_from_argv(
        [] if value == "auto" else ["--mixed_precision", "null" if value is None else value]
    )
    assert config.mixed_precision == value
    precision, why = train_module.resolve_mixed_precision(config)
    assert precision == expected and why.startswith(source)


def test_the_default_run_trains_in_bf16_exactly_where_the_cpu_has_it(tmp_path):
    """No launcher, the default mixed_precision (auto): this machine's own answer, recorded for --resume."""
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_MIXED_PRECISION"}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "run"
    args = tiny_args(out, "--max_steps", "2", "--sample_steps", "0", "--checkpointing_steps", "0")
    proc = subprocess.run(
        [sys.executable, "-m", "ddpm_hub.train", *args], env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((out / "train_info.json").read_text())
    expected = "bf16" if devices.auto_trains_bf16("cpu") else "no"
    assert info["mixed_precision"] == expected and info["mixed_precision_requested"] == expected
    assert info["mixed_precision_source"].startswith("auto: ")
    assert f"mixed precision {expected} (auto: " in proc.stdout
    assert f"mixed_precision: {expected}" in (out / "config.yaml").read_text()


def test_another_precision_in_the_same_process_is_a_clear_error(tmp_path):
    from accelerate import Accelerator

    from ddpm_hub.train import train

    Accelerator()  # this process's precision is now fixed (float32), as after a first train()
    with pytest.raises(ConfigError, match="already trained with another precision.*new process"):
        train(config_from_argv(tiny_args(tmp_path / "run", "--mixed_precision", "bf16")))
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------- trackers


def test_an_uninstalled_tracker_is_one_line_with_the_pip_command(tmp_path, capsys):
    import importlib.util

    assert importlib.util.find_spec("wandb") is None  # this test needs an environment without wandb
    run = tmp_path / "run"
    assert cli_main(["train", "--output_dir", str(run), "--log_with", "wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: log_with wandb: the wandb package is not installed; pip install wandb "
        "(or choose another tracker, or --log_with none)"
    )
    assert not run.exists()
    with pytest.raises(ConfigError, match="pip install wandb"):  # in a list too
        config_from_argv(["--log_with", "[tensorboard, wandb]"])


def test_log_with_takes_accelerate_trackers_lists_and_none():
    assert config_from_argv(["--log_with", "[tensorboard]"]).log_with == ["tensorboard"]
    assert config_from_argv(["--log_with", "none"]).log_with == "none"
    assert config_from_argv(["--log_with", "null"]).log_with is None
    with pytest.raises(
        ConfigError, match="'tensorbord' is not a tracker accelerate supports; choose from aim,"
    ):
        config_from_argv(["--log_with", "tensorbord"])


# --------------------------------------------------------------------------------------- GPU check


def test_gpu_check_validates_its_run_without_a_gpu(capsys, only):
    """benchmarks/gpu_check.py: --dry-run checks the shortened cifar10 config and prints the launch command;
    without --dry-run on a machine without CUDA it exits 2 with one line."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_check

    only()
    assert gpu_check.main(["--dry-run", "--steps", "200"]) == 0
    out = capsys.readouterr().out
    assert "configs/cifar10.yaml with overrides: OK (200 steps, bf16)" in out
    assert (
        "accelerate.commands.launch" in out and "--mixed_precision bf16" in out and "--max_steps 200" in out
    )
    assert gpu_check.main(["--output-dir", "unused"]) == 2
    assert "no CUDA GPU here" in capsys.readouterr().err
