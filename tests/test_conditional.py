"""Class-conditional generation with classifier-free guidance: labels from the data, the backbone contract,
label dropout in training, and the pipeline's class_labels / guidance_scale (as diffusers' DiTPipeline)."""

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_hub import DDPMHubPipeline, DDPMHubScheduler, UNet, load_pipeline
from ddpm_hub.cli import main as cli_main
from ddpm_hub.conditioning import guide
from ddpm_hub.config import ConfigError, DataConfig, config_from_argv
from ddpm_hub.data import DataError, load_images
from ddpm_hub.evaluate import class_accuracy
from ddpm_hub.plugins import get_samplers
from ddpm_hub.train import build_model, train


def _images(n, size=8):
    return [Image.fromarray(np.full((size, size), 20 * i, np.uint8), "L") for i in range(n)]


# ----------------------------------------------------------------------------------------------- data


def test_labels_from_a_parquet_column_with_class_names_from_its_classlabel(tmp_path):
    names = ["cat", "dog", "eel"]
    ds = datasets.Dataset.from_dict(
        {"image": _images(6), "class": [2, 0, 1, 2, 1, 0]},
        features=datasets.Features({"image": datasets.Image(), "class": datasets.ClassLabel(names=names)}),
    )
    ds.to_parquet(str(tmp_path / "train.parquet"))
    data = load_images(
        DataConfig(dataset=str(tmp_path / "train.parquet"), image_size=None, label_column="auto")
    )
    assert data.class_names == names
    assert data.labels.tolist() == [2, 0, 1, 2, 1, 0]
    assert int(data.images[3, 0, 0, 0]) == 60  # labels stay aligned with their images
    batch, labels = next(data.batches([[3, 1]]))
    assert batch[:, 0, 0, 0].tolist() == [60, 20] and labels.tolist() == [2, 0]


def test_labels_from_plain_integers_take_their_names_from_the_values():
    ds = datasets.Dataset.from_dict({"image": _images(4), "digit": [0, 3, 1, 3]})
    data = load_images(DataConfig(image_size=None, label_column="digit"), dataset=ds)
    assert data.class_names == ["0", "1", "2", "3"] and data.labels.tolist() == [0, 3, 1, 3]


def test_the_builtin_mnist5k_carries_its_digit_labels():
    data = load_images(DataConfig(dataset="mnist5k", label_column="auto"))
    assert data.class_names == [str(d) for d in range(10)]
    assert torch.bincount(data.labels).tolist() == [500] * 10


def test_labels_from_imagefolder_subfolders(tmp_path):
    for name in ("circle", "square"):
        (tmp_path / name).mkdir()
        for i in range(3):
            _images(1)[0].save(tmp_path / name / f"{i}.png")
    data = load_images(DataConfig(dataset=str(tmp_path), image_size=None, label_column="auto"))
    assert data.class_names == ["circle", "square"]
    assert sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 1]


def test_missing_or_non_integer_label_columns_are_clear_errors():
    ds = datasets.Dataset.from_dict({"image": _images(3), "y": [0.5, 1.0, 2.0], "name": ["a", "b", "a"]})
    with pytest.raises(
        DataError, match=r"none of the columns \['label', 'labels', 'class'\].*\['image', 'y', 'name'\]"
    ):
        load_images(DataConfig(image_size=None, label_column="auto"), dataset=ds)
    with pytest.raises(DataError, match="no label column 'target'.*data.label_column"):
        load_images(DataConfig(image_size=None, label_column="target"), dataset=ds)
    with pytest.raises(DataError, match="non-negative integer class ids; row 0 holds 0.5"):
        load_images(DataConfig(image_size=None, label_column="y"), dataset=ds)
    with pytest.raises(DataError, match="row 0 holds 'a'.*class_encode_column"):
        load_images(DataConfig(image_size=None, label_column="name"), dataset=ds)


# ------------------------------------------------------------------------------------------- backbones


def test_an_unconditional_model_given_class_labels_errors_clearly(tiny_unet_kwargs):
    unet = UNet(**tiny_unet_kwargs)
    x = torch.zeros(2, 1, 28, 28)
    with pytest.raises(ValueError, match="unconditional.*takes no class_labels"):
        unet(x, 3, class_labels=torch.tensor([1, 2]))
    pipe = DDPMHubPipeline(unet=unet, scheduler=DDPMHubScheduler())
    with pytest.raises(ValueError, match="this model is unconditional.*takes no class_labels"):
        pipe(class_labels=3, num_inference_steps=2)


def test_conditioning_adds_only_the_class_table_and_keeps_every_other_initial_weight(tiny_unet_kwargs):
    torch.manual_seed(0)
    plain = UNet(**tiny_unet_kwargs).state_dict()
    torch.manual_seed(0)
    cond = UNet(**tiny_unet_kwargs, num_class_embeds=10)
    extra = set(cond.state_dict()) - set(plain)
    assert extra == {"class_embedding.weight"} and cond.class_embedding.num_embeddings == 11  # + null class
    assert all(torch.equal(cond.state_dict()[k], v) for k, v in plain.items())
    with torch.no_grad():
        for p in cond.parameters():
            p.normal_(std=0.05)
    x = torch.randn(1, 1, 28, 28).expand(3, -1, -1, -1)  # the same image three times
    a = cond(x, 5, class_labels=torch.tensor([0, 1, 10])).sample
    assert (a[0] - a[1]).abs().max() > 1e-3 and (a[1] - a[2]).abs().max() > 1e-3  # the label matters
    assert torch.equal(
        cond(x, 5).sample, cond(x, 5, class_labels=torch.tensor([10] * 3)).sample
    )  # None: null
    with pytest.raises(ValueError, match=r"class_labels must be in \[0, 9\] \(or 10, the null class\)"):
        cond(x, 5, class_labels=torch.tensor([0, 1, 11]))


def test_a_backbone_without_conditioning_says_so_when_trained_on_labels():
    config = config_from_argv(
        ["--backbone", "diffusers-unet2d", "--model", "{}", "--data.label_column", "auto"]
    )
    with pytest.raises(ConfigError, match="'diffusers-unet2d' .*does not support class conditioning"):
        build_model(config, 1, 28, num_classes=10)


# -------------------------------------------------------------------------------------------- pipeline


@pytest.fixture
def cond_pipe(tiny_unet_kwargs):
    torch.manual_seed(0)
    unet = UNet(**tiny_unet_kwargs, num_class_embeds=3).eval()
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(std=0.05)
    pipe = DDPMHubPipeline(unet=unet, scheduler=DDPMHubScheduler(), class_names=["zero", "one", "two"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def _hand_loop(pipe, labels, scale, steps, seed):
    """The reverse loop written out: guidance from two separate forwards (conditional, then null class)."""
    sampler = pipe.make_sampler("ddim")
    sampler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((len(labels), 1, 28, 28), generator=g)
    labels = torch.tensor(labels)
    for t in sampler.timesteps:
        cond = pipe.unet(x, t, class_labels=labels).sample
        if scale != 1:
            uncond = pipe.unet(x, t, class_labels=torch.full_like(labels, 3)).sample
            cond = uncond + scale * (cond - uncond)
        x = sampler.step(cond, t, x, generator=g).prev_sample
    return (x.clamp(-1, 1) / 2 + 0.5).float()


def test_guidance_scale_1_equals_the_plain_conditional_output(cond_pipe):
    out = cond_pipe(
        class_labels=[2, 0],
        guidance_scale=1.0,
        sampler="ddim",
        num_inference_steps=8,
        generator=torch.Generator().manual_seed(1),
        output_type="pt",
    ).images
    assert torch.equal(out, _hand_loop(cond_pipe, [2, 0], 1.0, 8, 1))


def test_guidance_combines_conditional_and_null_class_outputs(cond_pipe):
    out = cond_pipe(
        class_labels=["two", "zero"],
        guidance_scale=3.0,
        sampler="ddim",
        num_inference_steps=8,
        generator=torch.Generator().manual_seed(1),
        output_type="pt",
    ).images
    expected = _hand_loop(cond_pipe, [2, 0], 3.0, 8, 1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)  # batched vs separate forwards
    plain = _hand_loop(cond_pipe, [2, 0], 1.0, 8, 1)
    assert (out - plain).abs().max() > 1e-2  # guidance changed the images
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    assert torch.equal(guide(torch.cat([a, b]), 2.0), b + 2 * (a - b))


def test_class_labels_as_an_int_a_name_or_a_list_and_their_errors(cond_pipe):
    kwargs = dict(sampler="ddim", num_inference_steps=8, output_type="pt")
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    by_id = cond_pipe(batch_size=2, class_labels=1, generator=g(), **kwargs).images
    by_name = cond_pipe(batch_size=2, class_labels="one", generator=g(), **kwargs).images
    by_list = cond_pipe(class_labels=[1, "one"], generator=g(), **kwargs).images
    assert by_id.shape == (2, 1, 28, 28) and torch.equal(by_id, by_name) and torch.equal(by_id, by_list)
    with pytest.raises(
        ValueError, match=r"unknown class name 'three'; this model's classes are \['zero', 'one', 'two'\]"
    ):
        cond_pipe(class_labels="three", **kwargs)
    with pytest.raises(ValueError, match="class id 3 is out of range: this model has 3 classes"):
        cond_pipe(class_labels=[3], **kwargs)
    with pytest.raises(ValueError, match="2 class_labels for batch_size=3"):
        cond_pipe(batch_size=3, class_labels=[0, 1], **kwargs)
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 0"):
        cond_pipe(class_labels=0, guidance_scale=float("nan"), **kwargs)


@pytest.mark.parametrize("sampler", sorted(get_samplers()))
def test_every_sampler_works_with_guidance(cond_pipe, sampler):
    entry = get_samplers()[sampler]
    steps = max(entry.min_steps, 2)
    images = cond_pipe(
        class_labels=[0, 2],
        guidance_scale=2.5,
        sampler=sampler,
        num_inference_steps=steps,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images
    assert images.shape == (2, 1, 28, 28) and torch.isfinite(images).all()


def test_class_names_are_saved_with_the_model_and_unconditional_folders_stay_as_they_were(
    cond_pipe, tiny_unet_kwargs, tmp_path
):
    cond_pipe.save_pretrained(tmp_path / "cond")
    loaded = load_pipeline(tmp_path / "cond")
    assert loaded.class_names == ["zero", "one", "two"] and loaded.num_classes == 3
    plain = DDPMHubPipeline(unet=UNet(**tiny_unet_kwargs), scheduler=DDPMHubScheduler())
    plain.save_pretrained(tmp_path / "plain")
    assert "class_names" not in json.loads((tmp_path / "plain" / "model_index.json").read_text())
    assert load_pipeline(tmp_path / "plain").class_names is None


def test_class_accuracy_counts_images_of_the_class_asked_for():
    from ddpm_hub.evaluate import load_images as real_digits
    from ddpm_hub.evaluate import load_labels

    rows = range(4000, 4100)
    images, digits = real_digits("mnist5k", rows), load_labels(rows)
    right = class_accuracy(images, digits.tolist(), [str(d) for d in range(10)])
    wrong = class_accuracy(images, ((digits + 1) % 10).tolist(), [str(d) for d in range(10)])
    assert right["class_accuracy"] > 0.9 and wrong["class_accuracy"] < 0.1
    with pytest.raises(ValueError, match="classes must be the digits 0-9"):
        class_accuracy(images[:2], [0, 1], ["cat", "dog"])


# -------------------------------------------------------------------------------------------- training


def test_a_conditional_run_trains_with_label_dropout_and_samples_a_class(tmp_path, capsys):
    names = ["dark", "light"]
    ds = datasets.Dataset.from_dict(
        {"image": _images(8, 28), "label": [0, 0, 0, 0, 1, 1, 1, 1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}),
    )
    run = tmp_path / "run"
    config = config_from_argv(
        [
            "--output_dir",
            str(run),
            "--data.label_column",
            "auto",
            "--data.image_size",
            "28",
            "--model",
            "{base_channels: 8, channel_mult: [1, 2], num_res_blocks: 1, attention_resolutions: [], "
            "dropout: 0.0, norm_num_groups: 4}",
            "--batch_size",
            "4",
            "--max_steps",
            "2",
            "--sample_steps",
            "0",
            "--num_sample_images",
            "2",
            "--final_sampler",
            "ddim",
            "--final_inference_steps",
            "8",
            "--log_with",
            "none",
        ]
    )
    train(config, dataset=ds)
    pipe = load_pipeline(run)
    assert pipe.class_names == names and pipe.unet.config.num_class_embeds == 2
    info = json.loads((run / "train_info.json").read_text())
    assert info["class_names"] == names and info["p_uncond"] == 0.1
    assert "Classes (2, id: name): 0: `dark`, 1: `light`" in (run / "pipeline" / "README.md").read_text()
    assert (
        cli_main(
            [
                "sample",
                str(run),
                "--class",
                "light",
                "--guidance-scale",
                "2",
                "--num-images",
                "2",
                "--sampler",
                "ddim",
                "--steps",
                "8",
                "--out",
                str(tmp_path / "g.png"),
            ]
        )
        == 0
    )
    with pytest.raises(SystemExit, match="--guidance-scale needs --class"):
        cli_main(["sample", str(run), "--guidance-scale", "3", "--sampler", "ddim", "--steps", "4"])
    with pytest.raises(SystemExit, match="--class: unknown class name 'cat'"):
        cli_main(["sample", str(run), "--class", "cat", "--sampler", "ddim", "--steps", "8"])
    with pytest.raises(SystemExit, match="--class-accuracy: .*classes must be the digits 0-9"):
        cli_main(
            ["eval", str(run), "--class-accuracy", "--num-samples", "4", "--sampler", "ddim", "--steps", "8"]
        )


def test_p_uncond_must_be_a_probability():
    with pytest.raises(ConfigError, match=r"p_uncond must be in \[0, 1\)"):
        config_from_argv(["--p_uncond", "1.5"])


# ------------------------------------------------------------------------------------------ the Space


def test_the_spaces_digit_picker_draws_the_digit_asked_for(space_url, space_app):
    """Through gradio_client, as a visitor's page does: the bundled class-conditional model, digit 7."""
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from ddpm_hub.evaluate import classifier_outputs

    client = Client(space_url, verbose=False)
    request = dict(
        model=space_app.COND_MODEL_LABEL, revision="", sampler="sde-dpm-solver++", steps=20, seed=0
    )
    grid, singles, _, summary = client.predict(
        **request, num_images=4, digit="7", guidance_scale=2.0, api_name="/generate"
    )
    assert "of class **7** (guidance 2)" in summary and "cond-model" in summary
    digits = torch.stack(
        [
            torch.from_numpy(np.array(Image.open(item["image"]).convert("L").resize((28, 28))))
            for item in singles
        ]
    )
    predicted = classifier_outputs(digits[:, None].float() / 255)[1].argmax(-1)
    assert (predicted == 7).sum() >= 3, predicted.tolist()  # the shipped classifier sees sevens
    # "any" is the null class: no class in the summary; a class the model lacks, or a class asked of the
    # unconditional default model, is one clear message
    *_, summary = client.predict(
        **request, num_images=1, digit="any", guidance_scale=2.0, api_name="/generate"
    )
    assert "of class" not in summary
    with pytest.raises(AppError, match="has no class 'x'; its classes are 0, 1, 2"):
        client.predict(**request, num_images=1, digit="x", guidance_scale=2.0, api_name="/generate")
    with pytest.raises(AppError, match="is not class-conditional, so it cannot draw a chosen class"):
        client.predict(
            **{**request, "model": ""}, num_images=1, digit="7", guidance_scale=2.0, api_name="/generate"
        )


def test_the_picker_appears_only_for_a_conditional_model_and_the_command_reproduces_it(space_app):
    default = space_app.ModelRef("local", str(space_app.DEFAULT_MODEL_DIR))
    cond = space_app.load_model(
        space_app.resolve_model(space_app.COND_MODEL_LABEL, None, allow_local=False, default=default)
    )
    plain = space_app.load_model(default)
    assert cond.pipe.class_names == [str(d) for d in range(10)] and plain.pipe.class_names is None
    assert space_app.check_class(cond, "3", None) == ("3", space_app.DEFAULT_GUIDANCE_SCALE)
    assert space_app.check_class(plain, "any", 5) == (None, None)
    *_, run = space_app.generate_stream(
        space_app.COND_MODEL_LABEL, "", "ddim", 8, 1, 0, "3", 1.5, allow_local=False, default=default
    )
    assert run.command.endswith("--class 3 --guidance-scale 1.5 --out grid.png")
    assert "spaces/cond-model" in run.command
