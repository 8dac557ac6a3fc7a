"""The Hugging Face Hub, outbound: push a trained pipeline with its model card.

Everything goes through ``huggingface_hub`` (``create_repo``, ``upload_folder``); this module decides
*what* travels and turns the Hub's errors into messages that say what to do. Pulling (resolving a repo id,
the file-list check, the download and their errors) is the core's: ``ddpm_hub.loading``.

What a push uploads: the pipeline folder's ``model_index.json``, component configs and ``.safetensors``
weights, the ``.py`` files it carries for diffusers' ``trust_remote_code``, the model card (``README.md``),
the sample grid (``samples.png``) and the loss curve (``loss.png``). Never checkpoints, optimizer state,
TensorBoard logs, intermediate sample grids or pickle files: only files matching :data:`PUSH_PATTERNS` are
staged.

Model card metadata. ``library_name: diffusers``: the repo *is* a diffusers pipeline folder
(model_index.json + component folders + safetensors), and ``diffusers`` is a library the Hub knows: it
lists the model under the diffusers library filter and counts its downloads with diffusers' own query
(huggingface.js model-libraries.ts), whereas an unknown library name (such as ``ddpm-hub``) gets the
default query, a root ``config.json``, which a pipeline repo does not have (Hub docs, "Models Download
Stats"). The ``ddpm-hub`` tag marks it as ours. The card shows two snippets: :func:`ddpm_hub.load_pipeline`
(safetensors only, no repo code), and diffusers' ``DiffusionPipeline.from_pretrained(repo,
trust_remote_code=True)``, which runs the pipeline code the folder carries (``ddpm_hub.remote_code``); the card
says what that permission means.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import tempfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData, SpaceCard, constants, get_token
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import HFValidationError, get_session, hf_raise_for_status, validate_repo_id
from safetensors import safe_open

from . import __version__
from .conditioning import DEFAULT_GUIDANCE_SCALE
from .datasets import BUILTIN_DATASET_SOURCES
from .loading import HubLoadError as HubLoadError  # re-exported: it lived here before ddpm_hub.loading
from .loading import _transport_errors, check_pipeline_folder, is_repo_id, pipeline_folder
from .samplers import resolve_steps
from .scheduler import PREDICTION_TYPES

#: files of a pipeline folder that a push uploads (relative paths, fnmatch patterns)
PUSH_PATTERNS = (
    "model_index.json",
    "*/config.json",
    "*/*_config.json",
    "*/*.safetensors",
    "*/*.safetensors.index.json",
    "*.py",  # the code stock diffusers runs with trust_remote_code (ddpm_hub.remote_code); never load_pipeline
    "README.md",
    "*.png",
)
#: run-folder files that travel with the pipeline (the card shows them)
RUN_IMAGES = ("samples.png", "loss.png")
#: the repo id in a card written before the repo is known; push() fills in the real one
CARD_PLACEHOLDER = "NS/NAME"
CARD_TAGS = ["ddpm", "ddpm-hub", "diffusers", "unconditional-image-generation"]
#: the license of a card that ddpm-hub writes when none is given
DEFAULT_LICENSE = "apache-2.0"
#: the ``license:`` ids the Hub accepts in a card (https://huggingface.co/docs/hub/repositories-licenses);
#: a push checks the card against this list offline, then against the Hub's own card validator
# fmt: off
HUB_LICENSES = frozenset([
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
    "lgpl-3.0", "isc", "h-research", "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr",
    "mpl-2.0", "odc-by", "odbl", "openmdw-1.0", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa",
    "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "fair-noncommercial-research-license",
    "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "grok2-community", "gemma", "unknown",
    "other",
])
# fmt: on


class HubPushError(OSError):
    """A push to the Hub failed; the message says why and what to do, ``__cause__`` holds the HTTP error."""


# --------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------


def resolve_run(path: str | Path) -> tuple[Path, Path | None]:
    """(pipeline folder, run folder or None) for a pipeline folder or a training run folder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"no pipeline or run folder at {path}")
    pipeline_dir = pipeline_folder(path)
    run_dir = pipeline_dir.parent if (pipeline_dir.parent / "train_info.json").is_file() else None
    return pipeline_dir, run_dir


def read_train_info(run_dir: Path | None) -> dict[str, Any] | None:
    if run_dir is None or not (run_dir / "train_info.json").is_file():
        return None
    return json.loads((run_dir / "train_info.json").read_text())


# --------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------


def _count_parameters(unet_dir: Path) -> int | None:
    """Parameter count from the safetensors headers (no weights loaded)."""
    files = sorted(unet_dir.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(f, framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 (safe_open is not iterable)
                n = 1
                for dim in st.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


def _fmt_count(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "unknown"
    s = float(s)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _dataset_ids(dataset: Any) -> list[str]:
    """Hub dataset ids for the card's ``datasets:`` metadata (local files are described, not linked)."""
    if not isinstance(dataset, str) or not dataset:
        return []
    builtin = dataset.removeprefix("builtin:")
    if builtin in BUILTIN_DATASET_SOURCES:
        return [BUILTIN_DATASET_SOURCES[builtin]]
    if os.path.exists(dataset) or dataset.startswith((".", "/", "~")):
        return []
    try:
        validate_repo_id(dataset)
    except HFValidationError:
        return []
    return [dataset]


def _objective(scheduler_config: dict[str, Any]) -> str:
    """The training objective in words, from the scheduler's ``prediction_type``."""
    name = scheduler_config.get("prediction_type", "epsilon")
    prediction = PREDICTION_TYPES.get(name)
    if prediction is None:
        return f"the MSE of the model's {name} prediction"
    return f"the MSE of the predicted {prediction.description}"


def _requirements(index: dict[str, Any], info: dict[str, Any] | None) -> list[tuple[str, str | None]]:
    """(distribution, version) pairs needed to load this pipeline: ddpm-hub and any plugins."""
    reqs: dict[str, str | None] = {"ddpm-hub": (info or {}).get("ddpm_hub_version") or __version__}
    for plugin in (info or {}).get("plugins") or []:
        if isinstance(plugin, dict) and plugin.get("distribution"):
            reqs.setdefault(plugin["distribution"], plugin.get("version"))
    for spec in (index.get("_ddpm_hub_requires") or {}).values():
        if isinstance(spec, dict) and spec.get("distribution"):
            reqs.setdefault(spec["distribution"], spec.get("version"))
    return list(reqs.items())


def check_license(license: Any) -> None:
    """ValueError unless ``license`` is a license id the Hub accepts (:data:`HUB_LICENSES`)."""
    if isinstance(license, str) and license in HUB_LICENSES:
        return
    close = difflib.get_close_matches(str(license).lower(), sorted(HUB_LICENSES), n=3)
    raise ValueError(
        f"{license!r} is not a license id the Hub accepts"
        + (f" (did you mean {' or '.join(close)}?)" if close else "")
        + ": use an id from https://huggingface.co/docs/hub/repositories-licenses such as apache-2.0 or mit, or "
        "'other' with the license text in a LICENSE file"
    )


def write_model_card(
    pipeline_dir: str | Path,
    info: dict[str, Any] | None,
    *,
    repo_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    samples: str | Path | None = None,
    loss_curve: str | Path | None = None,
) -> Path:
    """Write ``README.md`` (the Hub model card) into a pipeline folder and return its path.

    Args:
        pipeline_dir: the pipeline folder (``model_index.json``, ``unet/``, ``scheduler/``).
        info: the training run's ``train_info.json`` content (dataset, steps, batch size, hardware, ...);
            ``None`` for a pipeline trained elsewhere (the card then says so).
        repo_id: the Hub repo the card is for (used in the snippet; default ``NS/NAME``).
        license: the weights' license (the card's ``license:`` metadata).
        samples, loss_curve: PNGs to show; default ``samples.png`` / ``loss.png`` beside the pipeline
            folder (the run folder). They are copied into the pipeline folder, next to the card.
    """
    check_license(license)
    pipeline_dir = Path(pipeline_dir)
    index = check_pipeline_folder(pipeline_dir)
    info = dict(info or {})
    scheduler = json.loads((pipeline_dir / "scheduler" / "scheduler_config.json").read_text())
    unet_config = json.loads((pipeline_dir / "unet" / "config.json").read_text())

    images = {}
    for name, given in (("samples.png", samples), ("loss.png", loss_curve)):
        src = Path(given) if given is not None else pipeline_dir.parent / name
        dst = pipeline_dir / name
        if src.is_file() and src.resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        if dst.is_file():
            images[name] = dst

    datasets = _dataset_ids(info.get("dataset"))
    card_data = ModelCardData(
        library_name="diffusers",
        license=license,
        tags=CARD_TAGS,
        pipeline_tag="unconditional-image-generation",
        datasets=datasets or None,
    )

    repo = repo_id or CARD_PLACEHOLDER
    size = unet_config.get("sample_size")
    channels = unet_config.get("in_channels")
    backbone = info.get("backbone") or f"{index['unet'][0]}.{index['unet'][1]}"
    num_parameters = info.get("num_parameters") or _count_parameters(pipeline_dir / "unet")
    T = scheduler.get("num_train_timesteps")
    schedule = scheduler.get("beta_schedule", info.get("beta_schedule"))
    betas = f"{schedule}" + (
        f" (beta_start={scheduler['beta_start']:.3g}, beta_end={scheduler['beta_end']:.3g})"
        if schedule == "linear" and "beta_start" in scheduler and "beta_end" in scheduler
        else ""
    )
    reqs = _requirements(index, info)
    objective = _objective(scheduler)
    num_classes = unet_config.get("num_class_embeds")
    class_names = (index.get("class_names") or [str(i) for i in range(num_classes)]) if num_classes else None

    def steps(sampler: str) -> int:
        """The registry's default steps of ``sampler`` for this model's T."""
        return resolve_steps(sampler, None, T)

    lines = [f"# {repo}", ""]
    kind = "A class-conditional" if class_names else "An unconditional"
    lines += [
        f"{kind} DDPM image generator ({channels}-channel, {size}x{size} pixels) made with "
        "[ddpm-hub](https://github.com/ddpm-hub/ddpm-hub): denoising diffusion probabilistic models "
        "(Ho et al. 2020) on the Hugging Face stack.",
        "",
    ]
    if class_names:
        lines += [
            f"Classes ({len(class_names)}, id: name): "
            + ", ".join(f"{i}: `{name}`" for i, name in enumerate(class_names))
            + ". Ask for one with `class_labels` (an id, a name, or a list of either); classifier-free "
            f"guidance (`guidance_scale`, default {DEFAULT_GUIDANCE_SCALE}; 1 is none) sharpens the class"
            + (
                f" (trained with label dropout p_uncond={info['p_uncond']})"
                if info.get("p_uncond") is not None
                else ""
            )
            + ".",
            "",
        ]
    if "samples.png" in images:
        lines += ["![Samples from this model](samples.png)", ""]
    plugins = [(dist, ver) for dist, ver in reqs if dist != "ddpm-hub"]
    remote_code = sorted(
        p.relative_to(pipeline_dir).as_posix() for p in pipeline_dir.rglob("*.py") if p.is_file()
    )
    lines += [
        "## Use it",
        "",
        "With [ddpm-hub](https://github.com/ddpm-hub/ddpm-hub), which downloads the configs and safetensors "
        "weights only and never runs code from the repo. ddpm-hub is not on PyPI: install it from a clone of its "
        "source repository" + (", then the plugin(s) this model needs" if plugins else "") + ":",
        "",
        "```bash",
        "pip install ./ddpm-hub   # the folder of a ddpm-hub source checkout",
        *(
            f"pip install '{dist}>={ver}'" if ver and "unknown" not in ver else f"pip install {dist}"
            for dist, ver in plugins
        ),
        "```",
        "",
        "```python",
        "import torch",
        "from ddpm_hub import load_pipeline",
        "",
        f'pipe = load_pipeline("{repo}")',
        "images = pipe(batch_size=16, generator=torch.Generator().manual_seed(0)).images  # PIL images",
        '# faster: pipe(batch_size=16, sampler="sde-dpm-solver++", '
        f"num_inference_steps={steps('sde-dpm-solver++')})",
        *(
            [
                f"images = pipe(batch_size=16, class_labels={json.dumps(class_names[-1])}, guidance_scale={DEFAULT_GUIDANCE_SCALE}).images"
            ]
            if class_names
            else []
        ),
        "```",
        "",
        f"or from the shell: `ddpm-hub sample {repo} --num-images 16 --out grid.png"
        + (f" --class {class_names[-1]}" if class_names else "")
        + "`.",
        "",
    ]
    if isinstance(index.get("_class_name"), list) and remote_code:
        lines += [
            "With diffusers alone, no ddpm-hub installed:",
            "",
            "```python",
            "import torch",
            "from diffusers import DiffusionPipeline",
            "",
            f'pipe = DiffusionPipeline.from_pretrained("{repo}", trust_remote_code=True)',
            "images = pipe(batch_size=16, generator=torch.Generator().manual_seed(0)).images",
            "```",
            "",
            "`trust_remote_code=True` lets diffusers import and run the Python files that this repo carries ("
            + ", ".join(f"`{f}`" for f in remote_code)
            + ": the pipeline, backbone and scheduler code, generated by ddpm-hub from its own sources) on your "
            "machine, with your permissions. Read them first, and pin `revision=` to the commit you read, since a "
            "later commit can change them. Without it diffusers refuses to load the repo; ddpm-hub's "
            "`load_pipeline` needs no such permission because it never runs them. The same seed gives the same "
            "images either way.",
            "",
        ]
    lines += [
        "The repo is a diffusers pipeline folder (`model_index.json`, `unet/`, `scheduler/`, safetensors "
        "weights); `load_pipeline` downloads only safetensors, json, md and png files.",
        "",
        "## Sampling",
        "",
        f"- default sampler: `ddpm`, ancestral sampling with the posterior variance over all {T} steps, x0 "
        "clipped to [-1, 1] at each step (`ddpm-seed`: the seed's exact loop, unclipped)",
        f"- faster: `sde-dpm-solver++` ({steps('sde-dpm-solver++')} steps, stochastic like the seed's loop, x0 "
        f"thresholded), and the deterministic `dpm-solver++` ({steps('dpm-solver++')} steps) and `ddim` "
        f"({steps('ddim')} steps, x0 clipped to [-1, 1]); on a briefly trained model the deterministic ones "
        "give blurrier digits than the stochastic ones",
        "",
        "## Training",
        "",
    ]
    if info:
        rows = [
            ("dataset", info.get("dataset")),
            ("image size", f"{info.get('image_size', size)} px, {info.get('channels', channels)} channel(s)"),
            ("training steps", info.get("num_train_steps")),
            ("batch size (global)", info.get("batch_size")),
            ("learning rate", info.get("learning_rate")),
            ("diffusion steps T", info.get("num_train_timesteps", T)),
            ("beta schedule", betas),
            ("prediction", scheduler.get("prediction_type", "epsilon")),
            ("training timesteps", info.get("timestep_sampling")),
            (
                "loss weighting",
                (
                    f"min-SNR-{info['snr_gamma']:g}"
                    if isinstance(info.get("snr_gamma"), int | float)
                    and not isinstance(info["snr_gamma"], bool)
                    else None
                ),
            ),
            ("backbone", f"`{backbone}`, {_fmt_count(num_parameters)} parameters"),
            (
                "EMA decay",
                None
                if info.get("ema_decay") is None
                else f"{info['ema_decay']}"
                + (
                    f" (reached {info['ema_decay_reached']:.4g})"
                    if isinstance(info.get("ema_decay_reached"), int | float)
                    else ""
                ),
            ),
            ("mixed precision", info.get("mixed_precision")),
            (
                "hardware",
                f"{info.get('hardware', 'unknown')}"
                + (f" x {info['num_processes']} processes" if (info.get("num_processes") or 1) > 1 else ""),
            ),
            ("wall time", _fmt_seconds(info.get("wall_time_s"))),
            (
                "final loss",
                f"{info['final_loss']:.4g}" if isinstance(info.get("final_loss"), int | float) else None,
            ),
            ("ddpm-hub version", info.get("ddpm_hub_version")),
        ]
        lines += ["| | |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in rows if v is not None]
        lines += ["", f"Objective: {objective}, on images scaled to [-1, 1]."]
    else:
        lines += [
            "No training record (train_info.json) came with this pipeline. What the files say:",
            "",
            f"- backbone `{backbone}`, {_fmt_count(num_parameters)} parameters",
            f"- diffusion steps T = {T}, beta schedule {betas}",
        ]
    if "loss.png" in images:
        lines += ["", "![Training loss](loss.png)"]
    lines += ["", "## Requirements", ""]
    lines += [f"- `{dist}`" + (f" (trained with {ver})" if ver else "") for dist, ver in reqs]
    lines += [
        "",
        "A backbone or schedule from a plugin needs that plugin installed; `load_pipeline` names the "
        "distribution to install when one is missing.",
        "",
    ]

    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))
    path = pipeline_dir / "README.md"
    card.save(path)
    return path


# --------------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------------


def _stage(pipeline_dir: Path, run_dir: Path | None, staging: Path) -> list[str]:
    """Copy the files that a push uploads into ``staging``; return their relative paths."""
    staged = []
    for src in sorted(pipeline_dir.rglob("*")):
        rel = src.relative_to(pipeline_dir).as_posix()
        if src.is_file() and any(fnmatch(rel, p) for p in PUSH_PATTERNS):
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
            staged.append(rel)
    for name in RUN_IMAGES:
        if run_dir is not None and name not in staged and (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, staging / name)
            staged.append(name)
    return staged


def check_push_settings(repo_id: str | None, push: bool = True) -> None:
    """Raise ValueError unless ``repo_id`` is a NAMESPACE/NAME repo id and, for a push, a token is available.

    Training calls this before it starts when ``push_to_hub`` is on, so that a missing login fails in
    seconds instead of after hours of training. Nothing goes over the network.
    """
    if repo_id is None:
        raise ValueError("push_to_hub needs hub_repo_id, the Hub repo to push to (NAMESPACE/NAME)")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise ValueError(
            f"invalid Hub repo id {repo_id!r}: use NAMESPACE/NAME, for example me/ddpm-mnist ({exc})"
        ) from exc
    if "/" not in repo_id:
        raise ValueError(
            f"invalid Hub repo id {repo_id!r}: give the namespace too, as NAMESPACE/NAME (me/{repo_id})"
        )
    if push and get_token() is None:
        raise ValueError(
            f"pushing to {repo_id} needs a Hub token with write access and none is set: log in with "
            "`hf auth login` or set HF_TOKEN first"
        )


def push(
    run_or_pipeline_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    license: str | None = None,
):
    """Push a trained pipeline (a run folder or a pipeline folder) to the Hub repo ``repo_id``.

    Creates the repo if needed (``private`` applies only then) and the branch ``revision`` if it does not
    exist yet (from ``main``), then uploads in one commit: the pipeline folder (configs and safetensors
    weights), the model card (the folder's ``README.md``, its ``NS/NAME`` placeholder filled in, or one
    written now from the run's ``train_info.json``), ``samples.png`` and ``loss.png``. Stale files inside the
    component folders are deleted, so that the repo holds exactly the pushed weights. The default commit
    message says what the run did (``ddpm-hub train: STEPS steps on DATASET, final loss LOSS``); training's
    ``push_to_hub`` pushes through this same function. ``license`` replaces the card's ``license:`` (default:
    keep the card's; ``apache-2.0`` for a new card). Returns huggingface_hub's ``CommitInfo`` (``.oid`` is the
    commit sha, loadable later with ``load_pipeline(repo_id, revision=sha)``).

    Before anything is created on the Hub: a token must be available (checked first, without the network),
    offline mode must be off, and the card's metadata must pass the license check and the Hub's card
    validator; otherwise ``HubPushError`` or ``ValueError`` says what to fix.
    """
    _check_can_push(repo_id, token)
    if license is not None:
        check_license(license)
    pipeline_dir, run_dir = resolve_run(run_or_pipeline_dir)
    index = check_pipeline_folder(pipeline_dir)

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="ddpm-hub-push-") as tmp:
        staging = Path(tmp) / "repo"
        staging.mkdir()
        staged = _stage(pipeline_dir, run_dir, staging)
        card_path = staging / "README.md"
        if "README.md" not in staged:
            write_model_card(
                staging, read_train_info(run_dir), repo_id=repo_id, license=license or DEFAULT_LICENSE
            )
        else:
            card = ModelCard(card_path.read_text().replace(CARD_PLACEHOLDER, repo_id))
            if license is not None:
                card.data.license = license
            card_path.unlink()  # a hard link to the user's file: write a new one
            card.save(card_path)
        card = ModelCard.load(card_path)
        try:
            check_license(card.data.license)
        except ValueError as exc:
            raise ValueError(
                f"the model card {pipeline_dir / 'README.md'} has license: {exc}; pass --license"
            ) from exc
        components = [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list)]

        try:
            try:
                validate_card(card)  # the Hub's own check of the card's metadata, before the repo exists
            except ValueError as exc:
                raise HubPushError(
                    f"the Hub refused the model card's metadata, so nothing was pushed: {exc}"
                ) from exc
            api.create_repo(repo_id, private=private, exist_ok=True)
            if revision is not None:
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                revision=revision,
                commit_message=commit_message or _commit_message(read_train_info(run_dir), len(staged)),
                delete_patterns=[f"{c}/*" for c in components],
            )
        except HfHubHTTPError as exc:
            raise _push_error(exc, repo_id, token) from exc
        except _transport_errors() as exc:
            raise _unreachable(repo_id, exc) from exc


def validate_card(card: ModelCard, repo_type: str = "model") -> None:
    """The Hub's check of a card's metadata (ValueError when it refuses), asked of the Hub that gets the push.

    huggingface_hub's ``RepoCard.validate`` posts to https://huggingface.co whatever ``HF_ENDPOINT`` says in
    every version before 2.x (0.34 to 1.x): a push to a private Hub would send its card to the public one, and
    fail where only the private one is reachable. So this asks ``constants.ENDPOINT``, as 2.x does.
    """
    try:
        response = get_session().post(
            f"{constants.ENDPOINT}/api/validate-yaml",
            json={"repoType": repo_type, "content": str(card)},
            headers={"Accept": "text/plain"},
        )
        hf_raise_for_status(response)
    except HfHubHTTPError as exc:  # some clients raise on the status themselves: read it from the error
        if getattr(exc.response, "status_code", None) == 400:
            raise ValueError(exc.response.text) from exc
        raise


def _check_can_push(repo_id: str, token: str | None) -> None:
    """A valid repo id, a token and offline mode off (HubPushError/ValueError), checked without the network."""
    check_push_settings(repo_id, push=False)
    if not token and get_token() is None:
        raise HubPushError(
            f"pushing to {repo_id} needs a Hub token with write access and you are not logged in: log in with "
            "`hf auth login`, set HF_TOKEN, or pass a token (--token)"
        )
    if constants.HF_HUB_OFFLINE:
        raise HubPushError(
            f"pushing to {repo_id} needs the Hub, and offline mode is on (HF_HUB_OFFLINE=1): unset HF_HUB_OFFLINE"
        )


def _unreachable(repo_id: str, exc: Exception) -> HubPushError:
    return HubPushError(
        f"pushing to {repo_id} failed: the Hub ({constants.ENDPOINT}) cannot be reached "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); check your connection "
        "(and HF_ENDPOINT) and push again"
    )


def _commit_message(info: dict[str, Any] | None, num_files: int) -> str:
    """The default commit message: what the run did (steps, data, final loss) when its train_info is there."""
    if info and {"num_train_steps", "dataset", "final_loss"} <= info.keys():
        return (
            f"ddpm-hub train: {info['num_train_steps']} steps on {info['dataset']}, "
            f"final loss {info['final_loss']:.4f}"
        )
    return f"Upload DDPM pipeline with ddpm-hub ({num_files} files)"


def _push_error(exc, repo_id: str, token: str | None) -> HubPushError:
    status = exc.response.status_code if exc.response is not None else None
    login = "log in with `hf auth login`, set HF_TOKEN, or pass a token (--token)"
    if status == 401:
        has_token = bool(token) or get_token() is not None
        why = "the Hub rejected your token" if has_token else "you are not logged in"
        return HubPushError(f"pushing to {repo_id} needs a Hub token with write access and {why}: {login}")
    if status == 403:
        return HubPushError(
            f"your token cannot write to {repo_id} on {constants.ENDPOINT}: push to your own namespace or an "
            f"organization you can write to, or use a token with write access ({exc})"
        )
    return HubPushError(f"pushing to {repo_id} failed: {exc}")


# --------------------------------------------------------------------------------------------------
# Deploy the Space
# --------------------------------------------------------------------------------------------------

#: the file of a deployed Space that names its default model when that is a Hub repo (read by app.py)
SPACE_MODEL_REPO_FILE = "default-model-repo.txt"
#: the bundled model folder of the Space (spaces/default-model)
SPACE_DEFAULT_MODEL = "default-model"


def _space_model_folders(space_dir: Path) -> list[Path]:
    """The model folders bundled in a Space folder (those holding a model_index.json)."""
    return sorted(p for p in space_dir.iterdir() if p.is_dir() and (p / "model_index.json").is_file())


def _check_space_model(folder: Path) -> None:
    """A bundled model must load with core ddpm-hub alone: the Space vendors ddpm_hub, not its plugins."""
    index = check_pipeline_folder(folder)
    plugins = sorted(
        {
            spec["distribution"]
            for spec in (index.get("_ddpm_hub_requires") or {}).values()
            if isinstance(spec, dict) and spec.get("distribution") not in (None, "ddpm-hub")
        }
    )
    if plugins:
        raise ValueError(
            f"the model {folder} needs the plugin(s) {', '.join(plugins)}, which a deployed Space does not have "
            "(it carries ddpm_hub only): push the model and deploy with a plain ddpm-hub model, or bundle one "
            "that uses the core backbone and schedules"
        )


def stage_space(space_dir: str | Path, staging: str | Path, model: str | Path | None = None) -> list[str]:
    """Write the files of a Space repo into ``staging``; return the Hub models its card names.

    ``space_dir`` is the checkout's ``spaces/`` (app.py, README.md, requirements.txt, the bundled model
    folders). The ``ddpm_hub`` package that is running is copied beside ``app.py``, so that the Space runs
    from its own files (spaces/README.md says why it is vendored rather than installed from a wheel).
    ``model``: ``None`` keeps the bundled model(s); a pipeline or run folder replaces ``default-model/``; a Hub
    repo id becomes the default model (written to :data:`SPACE_MODEL_REPO_FILE`) and no model is bundled.
    """
    space_dir, staging = Path(space_dir), Path(staging)
    if not (space_dir / "app.py").is_file():
        raise FileNotFoundError(f"no Space at {space_dir}: it has no app.py")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
    shutil.copytree(space_dir, staging, ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(Path(__file__).resolve().parent, staging / "ddpm_hub", ignore=ignore)

    card = SpaceCard.load(staging / "README.md")
    models = list(card.data.get("models") or [])
    if model is not None:
        local = Path(model).expanduser()
        if local.is_dir():
            pipeline_dir, _ = resolve_run(local)
            shutil.rmtree(staging / SPACE_DEFAULT_MODEL, ignore_errors=True)
            (staging / SPACE_DEFAULT_MODEL).mkdir()
            _stage(pipeline_dir, None, staging / SPACE_DEFAULT_MODEL)
        elif is_repo_id(str(model)) and "/" in str(model):
            for folder in _space_model_folders(staging):
                if folder.name == SPACE_DEFAULT_MODEL:
                    shutil.rmtree(folder)
            (staging / SPACE_MODEL_REPO_FILE).write_text(f"{model}\n")
            models.insert(0, str(model))
        else:
            raise ValueError(
                f"--model {model!r} is neither a pipeline or run folder nor a Hub repo id (NAMESPACE/NAME)"
            )
    for folder in _space_model_folders(staging):
        _check_space_model(folder)
    if models:
        card.data.models = list(dict.fromkeys(models))
    card.save(staging / "README.md")
    return list(dict.fromkeys(models))


def deploy_space(
    space_dir: str | Path,
    repo_id: str,
    model: str | Path | None = None,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
):
    """Create or update the Space repo ``repo_id`` (gradio SDK) with the Space's files; return (url, commit).

    One commit through huggingface_hub's ``upload_folder`` holds the files of :func:`stage_space`; files of
    an earlier deploy that are no longer staged are deleted, so the repo is exactly what this deploy staged.
    ``private`` applies when the Space is created. ``url`` is the Space's page on the Hub.
    """
    _check_can_push(repo_id, token)
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="ddpm-hub-space-") as tmp:
        staging = Path(tmp) / "space"
        stage_space(space_dir, staging, model=model)
        try:
            url = api.create_repo(
                repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True
            )
            commit = api.upload_folder(
                repo_id=repo_id,
                repo_type="space",
                folder_path=staging,
                commit_message=commit_message or "Deploy the ddpm-hub Space",
                delete_patterns=["*"],
            )
        except HfHubHTTPError as exc:
            raise _push_error(exc, repo_id, token) from exc
        except _transport_errors() as exc:
            raise _unreachable(repo_id, exc) from exc
    return url, commit
