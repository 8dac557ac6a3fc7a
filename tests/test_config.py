"""The typed training config: YAML files, command-line overrides, and the errors for bad keys and values."""

from pathlib import Path

import pytest

from ddpm_hub.config import ConfigError, TrainConfig, config_from_argv, load_config, parse_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_the_builtin_default_is_configs_mnist_yaml():
    assert load_config(CONFIGS / "mnist.yaml") == TrainConfig()
    assert load_config() == TrainConfig()


@pytest.mark.parametrize("name", ["mnist", "mnist-seed", "mnist-cond", "cifar10", "butterflies"])
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / f"{name}.yaml")
    assert config.output_dir == f"runs/{name}"
    assert config.scheduler["num_train_timesteps"] == 512


def test_the_seed_config_is_the_default_with_the_seeds_objective_precision_and_chain():
    """configs/mnist-seed.yaml keeps the seed's recipe runnable: the default's data, model, schedule and
    optimiser, with the noise as the target, float32 and the seed's unclipped 512-step chain."""
    import dataclasses

    seed, default = load_config(CONFIGS / "mnist-seed.yaml"), TrainConfig()
    assert seed.scheduler == {**default.scheduler, "prediction_type": "epsilon"}
    assert default.scheduler["prediction_type"] == "v_prediction"
    assert (seed.mixed_precision, seed.final_sampler, seed.lr_scheduler, seed.snr_gamma) == (
        "no",
        "ddpm-seed",
        "constant",
        None,
    )
    different = {
        f.name for f in dataclasses.fields(TrainConfig) if getattr(seed, f.name) != getattr(default, f.name)
    }
    assert seed.timestep_sampling.kind == "uniform" and default.timestep_sampling.kind == "logsnr_normal"
    assert different == {"output_dir", "scheduler", "mixed_precision", "final_sampler", "timestep_sampling"}


def test_cifar10_config_is_the_ddpm_paper_recipe():
    from ddpm_hub.train import build_model

    config = load_config(CONFIGS / "cifar10.yaml")
    assert (config.batch_size, config.learning_rate, config.ema.max_decay) == (128, 2e-4, 0.9999)
    assert config.model["dropout"] == 0.1 and config.data.random_flip
    model = build_model(config, channels=3, image_size=32)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 35.7


def test_accelerate_configs_are_valid_yaml_with_the_right_launch_type():
    import yaml

    configs = {p.stem: yaml.safe_load(p.read_text()) for p in (CONFIGS / "accelerate").glob("*.yaml")}
    assert set(configs) == {"multi_gpu", "multi_node", "cpu_2proc"}
    assert configs["multi_node"]["num_machines"] > 1 and configs["multi_gpu"]["num_machines"] == 1
    # a MULTI_GPU launch that ACCELERATE_USE_CPU=1 puts on the CPU (use_cpu would run one process)
    assert (
        configs["cpu_2proc"]["distributed_type"] == "MULTI_GPU" and configs["cpu_2proc"]["num_processes"] == 2
    )


def test_overrides_in_every_spelling():
    config = config_from_argv(
        [
            "--max_steps",
            "100",
            "--model.base_channels",
            "64",
            "learning_rate=2e-4",
            "--data.random_flip",
            "--ema.max_decay=0.99",
            "--max-grad-norm",
            "null",
            "--model.channel_mult",
            "[1, 2]",
        ]
    )
    assert config.max_steps == 100 and isinstance(config.max_steps, int)
    assert config.model["base_channels"] == 64 and config.model["channel_mult"] == [1, 2]
    assert config.model["num_res_blocks"] == 1  # the rest of the default model is kept
    assert config.learning_rate == 2e-4 and config.data.random_flip is True
    assert config.ema.max_decay == 0.99 and config.max_grad_norm is None


def test_config_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 7\ndata:\n  dataset: somewhere\nmodel:\n  base_channels: 16\n")
    config = config_from_argv(["--config", str(path), "--max_steps", "9"])
    assert config.max_steps == 9 and config.data.dataset == "somewhere"
    assert config.model == {"base_channels": 16}  # a model mapping in a file replaces the default one
    assert parse_overrides(["--config=x.yaml"]) == ("x.yaml", [])


def test_yaml_1_1_boolean_words_stay_strings_for_string_keys(tmp_path):
    """``no``/``off``/``yes``/``on`` are YAML 1.1 booleans; a string-typed key keeps the word, a boolean key takes it
    as a boolean (and true/false stay booleans)."""
    config = config_from_argv(
        ["--mixed_precision", "no", "--hub_revision", "on", "--data.split", "yes", "--output_dir", "off"]
    )
    assert (config.mixed_precision, config.hub_revision, config.data.split, config.output_dir) == (
        "no",
        "on",
        "yes",
        "off",
    )
    config = config_from_argv(
        ["--data.random_flip", "yes", "--ema.enabled", "off", "--data.center_crop", "no"]
    )
    assert (config.data.random_flip, config.ema.enabled, config.data.center_crop) == (True, False, False)
    assert config_from_argv(["--data.random_flip", "true"]).data.random_flip is True
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: no\ndata:\n  random_flip: on\n")
    config = config_from_argv(["--config", str(path)])
    assert config.mixed_precision == "no" and config.data.random_flip is True
    with pytest.raises(ConfigError, match="bad value for mixed_precision: False"):
        config_from_argv(["--mixed_precision", "false"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--max_stepz", "3"], "unknown config key 'max_stepz'; allowed keys here: output_dir"),
        (["--data.colour", "1"], "unknown config key 'data.colour'; allowed keys here: data.dataset"),
        (["--max_steps.x", "1"], "max_steps is an integer, it has no sub-keys"),
        (["--max_steps", "ten"], "bad value for max_steps: 'ten'; allowed: an integer"),
        (
            ["--mixed_precision", "fp8"],
            "bad value for mixed_precision: 'fp8'; allowed: one of 'no', 'fp16', 'bf16', 'auto' or null",
        ),
        (["--data.random_flip", "maybe"], "bad value for data.random_flip: 'maybe'; allowed: true or false"),
        (["--batch_size", "0"], "batch_size must be at least 1, got 0"),
        (["--data.channels", "2"], "data.channels must be 1, 3 or null"),
        (["oops"], "cannot read the argument 'oops'"),
    ],
)
def test_bad_keys_and_values_name_the_key_and_what_is_allowed(argv, message):
    with pytest.raises(ConfigError) as info:
        config_from_argv(argv)
    assert message in str(info.value)


def test_unknown_key_in_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("ema:\n  decay: 0.9\n")
    with pytest.raises(ConfigError, match="unknown config key 'ema.decay'; allowed keys here: ema.enabled"):
        load_config(path)


def test_unknown_model_and_scheduler_keys_name_the_allowed_ones():
    from ddpm_hub.train import build_model, build_scheduler

    with pytest.raises(
        ConfigError, match=r"unknown model key\(s\) \['base_chanels'\] for UNet; allowed: .*base_channels"
    ):
        build_model(config_from_argv(["--model.base_chanels", "8"]), 1, 28)
    with pytest.raises(ConfigError, match=r"unknown scheduler key\(s\) \['T'\].*num_train_timesteps"):
        build_scheduler(config_from_argv(["--scheduler.T", "8"]))
    with pytest.raises(ConfigError, match="model.in_channels=3 does not match the data"):
        build_model(config_from_argv(["--model.in_channels", "3"]), 1, 28)
    with pytest.raises(ConfigError, match="unknown backbone 'nope'"):
        build_model(config_from_argv(["--backbone", "nope"]), 1, 28)


def test_cli_reports_a_bad_key_and_exits_2(capsys):
    from ddpm_hub.cli import main

    assert main(["train", "--max_stepz", "3"]) == 2
    assert "unknown config key 'max_stepz'" in capsys.readouterr().err
    assert main(["train", "--help"]) == 0
    assert "--data.image_column" in capsys.readouterr().out
