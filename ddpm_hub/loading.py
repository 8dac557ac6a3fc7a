"""Loading a pipeline: the one way in (``load_pipeline``), for a local folder or a Hub repo id.

This module owns every step between a name and a built pipeline, and their errors:

1. resolve ``repo_id_or_path``: an existing folder (a pipeline folder, or a training run folder with
   ``pipeline/``) wins; otherwise it must be a Hub repo id (:func:`is_repo_id`);
2. for a repo, check its file list before downloading anything (:func:`check_repo_files`: no
   ``model_index.json``, or unet weights only as pickle files, is refused after one API call);
3. download only :data:`PULL_PATTERNS` (safetensors, json, md, png) with ``snapshot_download`` into the
   Hugging Face cache, never pickle files or repo code (:func:`download_pipeline`);
4. check the folder (:func:`check_pipeline_folder`: components present, safetensors weights, the
   component libraries and the scheduler's ``beta_schedule`` installed, else a message naming the plugin);
5. build ``DDPMHubPipeline.from_pretrained(folder, use_safetensors=True)``.

Hub errors become :class:`HubLoadError` with a ``reason``. Pushing and model cards live in ``ddpm_hub.hub``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, get_token, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import SafetensorError, safe_open

from .pipeline import DDPMHubPipeline
from .plugins import (
    MissingPluginError,
    distribution_of,
    get_schedules,
    load_plugins,
    unavailable_reason,
)

#: files that a pull downloads (snapshot_download allow_patterns)
PULL_PATTERNS = ["*.safetensors", "*.json", "*.md", "*.png"]
#: weight files that would need unpickling: never loaded, never downloaded
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class HubLoadError(OSError):
    """A Hub repo could not be loaded; ``reason`` says why, ``__cause__`` holds huggingface_hub's error.

    Reasons: ``repo_not_found``, ``revision_not_found``, ``authentication``, ``offline_not_cached``,
    ``pickle_only``, ``incomplete``, ``http``.
    """

    def __init__(self, message: str, reason: str, repo_id: str, revision: str | None = None):
        super().__init__(message)
        self.reason, self.repo_id, self.revision = reason, repo_id, revision


# --------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------


def load_pipeline(
    repo_id_or_path: str | Path,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    **kwargs: Any,
) -> DDPMHubPipeline:
    """Load a pipeline from a local folder (a pipeline folder or a training run folder) or a Hub repo.

    A local folder wins; otherwise ``repo_id_or_path`` is a Hub repo id (``NAMESPACE/NAME``), downloaded
    into the Hugging Face cache, safetensors/json/md/png files only (``revision``: a branch, tag or commit
    sha; ``token``: for private repos, default the logged-in token). With ``HF_HUB_OFFLINE=1`` it loads
    from the cache. A repo that holds only pickle weights is refused before anything is downloaded.
    Loads ddpm-hub checkpoints and stock diffusers DDPM checkpoints (``UNet2DModel`` + ``DDPMScheduler``)
    alike. ``kwargs`` go to ``DiffusionPipeline.from_pretrained`` (``torch_dtype`` ...).

    Raises:
        FileNotFoundError: a local path that does not exist, or a folder that is not a pipeline folder.
        ValueError: a string that is neither an existing folder nor a valid Hub repo id.
        ddpm_hub.loading.HubLoadError: the Hub repo could not be loaded; ``.reason`` is one of
            ``repo_not_found``, ``revision_not_found``, ``authentication``, ``offline_not_cached``,
            ``pickle_only``, ``incomplete``, ``http``.
        ddpm_hub.plugins.MissingPluginError: the checkpoint needs a plugin that is not installed or loaded.
    """
    load_plugins()
    path = Path(repo_id_or_path).expanduser()
    if path.is_dir():
        folder = pipeline_folder(path)
        check_pipeline_folder(folder)
    else:
        name = str(repo_id_or_path)
        if isinstance(repo_id_or_path, Path) or name.startswith((".", "/", "~", "\\")) or path.exists():
            raise FileNotFoundError(f"no pipeline folder at {path}")
        if not is_repo_id(name):
            raise ValueError(
                f"{name!r} is neither an existing local folder nor a valid Hub repo id: give a pipeline folder, a "
                "training run folder, or a Hub repo id such as NAMESPACE/NAME (letters, digits, '-', '_', '.')"
            )
        try:
            folder = download_pipeline(name, revision=revision, token=token, cache_dir=cache_dir)
        except HubLoadError as exc:
            # NS/NAME is also a relative path: a mistyped local folder is said first, then the Hub's answer
            parent = f" (its parent {path.parent} exists)" if path.parent.is_dir() else ""
            raise HubLoadError(
                f"there is no folder {path}{parent}; read as a Hub repo id: {exc}",
                exc.reason,
                exc.repo_id,
                exc.revision,
            ) from exc
        try:
            check_pipeline_folder(folder)
        except FileNotFoundError as exc:
            raise HubLoadError(
                f"Hub repo {name}{f' (revision {revision})' if revision else ''} is not a complete pipeline: {exc}",
                "incomplete",
                name,
                revision,
            ) from exc
    return DDPMHubPipeline.from_pretrained(folder, use_safetensors=True, **kwargs)


# --------------------------------------------------------------------------------------------------
# Local folders
# --------------------------------------------------------------------------------------------------


def pipeline_folder(path: Path) -> Path:
    """The pipeline folder in ``path``: the folder itself, or a training run's ``pipeline/``."""
    if (path / "model_index.json").is_file():
        return path
    if (path / "pipeline" / "model_index.json").is_file():
        return path / "pipeline"
    raise FileNotFoundError(
        f"{path} is not a pipeline folder: it has no model_index.json (nor pipeline/model_index.json, as a "
        "training run folder has). Point to the folder that `DDPMHubPipeline.save_pretrained` or "
        "`ddpm-hub train` wrote"
    )


def _pickle_message(where: str, pickles: list[str]) -> str:
    """Why pickle-only weights are refused, and what to do (one wording for a folder and a repo)."""
    return (
        f"{where} holds its unet weights only as pickle files ({', '.join(pickles)}); ddpm-hub loads safetensors "
        "only, since unpickling a downloaded file can run arbitrary code. Ask the author to add safetensors "
        "weights, or convert them yourself where you trust the file (load it, then "
        "save_pretrained(..., safe_serialization=True))"
    )


def _missing_plugin_message(what: str, requirement: dict[str, Any], fallback: str) -> str:
    """The sentence that says which distribution to install (or allow) for ``what``."""
    dist = requirement.get("distribution") or fallback
    version = requirement.get("version")
    saved = f" (saved with version {version})" if version else ""
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pin = f"=={version}" if version else ""
        return f"{what} is provided by the distribution {dist!r}{saved}, which is not installed: pip install {dist}{pin}"
    reason = unavailable_reason(dist)  # left out by DDPM_HUB_LOAD_PLUGINS, or disabled
    if reason:
        return f"{what} is provided by the distribution {dist!r}{saved}, which is installed but {reason}"
    return (
        f"{what} is provided by the distribution {dist!r}{saved}, which is installed but does not provide it; "
        f"upgrade it: pip install -U {dist}"
    )


def check_pipeline_folder(folder: Path) -> dict[str, Any]:
    """Check that a pipeline folder is complete and loadable safely; return its model_index.json.

    Raises a clear error when a component folder or its safetensors weights are missing, when the weights
    exist only as pickle files (never loaded), or when a component's library or the scheduler's
    ``beta_schedule`` (a plugin) is not installed or not loaded (``MissingPluginError``, naming the
    distribution recorded in ``_ddpm_hub_requires``).
    """
    index = _read_json(folder / "model_index.json")
    requires = index.get("_ddpm_hub_requires") or {}
    for name in ("unet", "scheduler"):
        if name not in index:
            raise ValueError(
                f"{folder / 'model_index.json'} has no {name!r} component; this is not a DDPM pipeline"
            )
        entry = index[name]
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(v, str) for v in entry)):
            raise ValueError(
                f"{folder / 'model_index.json'} is invalid: {name!r} must be [library, class name], such as "
                f'["ddpm_hub", "UNet"], got {entry!r}'
            )
        library, class_name = entry
        what = f"this checkpoint's {name} ({library}.{class_name})"
        try:
            module = importlib.import_module(library)
        except ImportError as exc:
            message = _missing_plugin_message(
                what, requires.get(name, {}), library.split(".")[0].replace("_", "-")
            )
            raise MissingPluginError(message, name=library) from exc
        if not hasattr(module, class_name):
            raise MissingPluginError(
                f"this checkpoint's {name} is {library}.{class_name}, but the installed {library} has no "
                f"{class_name}; upgrade it"
            )
        # importable is not enough: a plugin that DDPM_HUB_LOAD_PLUGINS leaves out, or a disabled one, is not used
        dist = requires.get(name, {}).get("distribution") or (distribution_of(module) or (None,))[0]
        if dist and unavailable_reason(dist):
            raise MissingPluginError(_missing_plugin_message(what, requires.get(name, {}), dist))
        component = folder / name
        if not component.is_dir():
            raise FileNotFoundError(f"incomplete pipeline folder {folder}: the {name}/ folder is missing")
    unet = folder / "unet"
    if not (unet / "config.json").is_file():
        raise FileNotFoundError(f"incomplete pipeline folder {folder}: unet/config.json is missing")
    if not list(unet.glob("*.safetensors")):
        pickles = sorted(p.name for p in unet.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise ValueError(_pickle_message(str(folder), pickles))
        raise FileNotFoundError(f"incomplete pipeline folder {folder}: unet/ has no .safetensors weights")
    _check_safetensors(folder)
    scheduler_config = folder / "scheduler" / "scheduler_config.json"
    if not scheduler_config.is_file():
        raise FileNotFoundError(
            f"incomplete pipeline folder {folder}: scheduler/scheduler_config.json is missing"
        )
    if index["scheduler"][1] == "DDPMHubScheduler":
        config = _read_json(scheduler_config)
        schedule = config.get("beta_schedule", "linear")
        if config.get("trained_betas") is None and schedule not in get_schedules():
            requirement = requires.get("scheduler", {})
            if requirement.get("beta_schedule") not in (None, schedule):
                requirement = {}
            fallback = "the plugin that registers it (see `ddpm-hub plugins --all`)"
            if requirement:
                message = _missing_plugin_message(
                    f"this checkpoint's beta_schedule {schedule!r}", requirement, ""
                )
            else:
                message = (
                    f"this checkpoint's beta_schedule {schedule!r} is not registered; install {fallback}"
                )
            raise MissingPluginError(message)
    return index


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ValueError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}): restore it, or save the pipeline again") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path} is invalid: expected a JSON object, got {type(data).__name__}")
    return data


def _check_safetensors(folder: Path) -> None:
    """ValueError naming a truncated or corrupt ``.safetensors`` file of a pipeline folder (header check only)."""
    for path in sorted(folder.glob("*/*.safetensors")):
        try:
            with safe_open(path, framework="pt"):
                pass
        except SafetensorError as exc:
            raise ValueError(
                f"{path} is corrupt (truncated or not a safetensors file: {exc}); save the pipeline again, or "
                "for a Hub download delete the file so that it downloads again"
            ) from exc


# --------------------------------------------------------------------------------------------------
# Hub repos
# --------------------------------------------------------------------------------------------------


def is_repo_id(name: str) -> bool:
    """Whether ``name`` is a valid Hub repo id (NS/NAME or NAME)."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def check_repo_files(files: list[str], repo_id: str, revision: str | None = None) -> None:
    """Refuse a Hub repo from its file list, before downloading: not a pipeline, or pickle-only weights."""
    at = f"Hub repo {repo_id}" + (f" at revision {revision}" if revision else "")
    if "model_index.json" not in files:
        raise HubLoadError(
            f"{at} is not a diffusers pipeline: it has no model_index.json (its files: "
            f"{', '.join(sorted(files)[:12])}). Push a pipeline folder with `ddpm-hub push` or "
            "`DDPMHubPipeline.push_to_hub`",
            "incomplete",
            repo_id,
            revision,
        )
    unet = [f for f in files if f.startswith("unet/")]
    if not any(f.endswith(".safetensors") for f in unet):
        pickles = sorted(f for f in unet if f.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise HubLoadError(
                _pickle_message(at, pickles) + "; nothing was downloaded", "pickle_only", repo_id, revision
            )
        raise HubLoadError(
            f"{at} is an incomplete pipeline: unet/ has no .safetensors weights",
            "incomplete",
            repo_id,
            revision,
        )


def _hub_error(
    exc: Exception,
    repo_id: str,
    revision: str | None,
    token: str | bool | None,
    cache_dir: str | Path | None = None,
) -> HubLoadError:
    """A HubLoadError with a message that says what happened and what to do."""
    endpoint = constants.ENDPOINT
    at = f"Hub repo {repo_id}" + (f" (revision {revision})" if revision else "")
    logged_in = bool(token) if token is not None else get_token() is not None
    login = "log in with `hf auth login`, set HF_TOKEN, or pass token="
    if isinstance(exc, GatedRepoError):
        return HubLoadError(
            f"{at} is gated: request access on {endpoint}/{repo_id}, then {login}",
            "authentication",
            repo_id,
            revision,
        )
    if isinstance(exc, RepositoryNotFoundError):
        if not logged_in:
            return HubLoadError(
                f"{at} was not found on {endpoint}, or it is private and needs authentication: you are not "
                f"logged in. Check the repo id (NAMESPACE/NAME), or {login}",
                "authentication",
                repo_id,
                revision,
            )
        return HubLoadError(
            f"{at} was not found on {endpoint}: check the repo id (NAMESPACE/NAME). If it is private, make sure "
            "your token can read it",
            "repo_not_found",
            repo_id,
            revision,
        )
    if isinstance(exc, RevisionNotFoundError):
        return HubLoadError(
            f"Hub repo {repo_id} has no revision {revision!r}: give an existing branch, tag or commit sha "
            f"(see {endpoint}/{repo_id}/tree/main), or leave revision out for main",
            "revision_not_found",
            repo_id,
            revision,
        )
    if isinstance(exc, LocalEntryNotFoundError):
        offline = constants.HF_HUB_OFFLINE
        cause = exc.__cause__
        why = (
            "offline mode is on (HF_HUB_OFFLINE=1)"
            if offline
            else f"the Hub ({endpoint}) cannot be reached"
            + (f" ({type(cause).__name__}: {str(cause).splitlines()[0]})" if cause is not None else "")
        )
        return HubLoadError(
            f"{at} is not in the local cache ({cache_dir or constants.HF_HUB_CACHE}) and {why}. Download it once "
            "while online"
            + (", or unset HF_HUB_OFFLINE" if offline else ", or check your connection")
            + "; a local pipeline folder also works",
            "offline_not_cached",
            repo_id,
            revision,
        )
    if (
        isinstance(exc, HfHubHTTPError)
        and exc.response is not None
        and exc.response.status_code in (401, 403)
    ):
        return HubLoadError(
            f"{at}: the Hub refused the token ({exc.response.status_code}): {login} with a "
            "valid token that can read the repo",
            "authentication",
            repo_id,
            revision,
        )
    return HubLoadError(f"{at} could not be loaded: {exc}", "http", repo_id, revision)


def _transport_errors() -> tuple[type[Exception], ...]:
    """The connection errors of the HTTP client huggingface_hub uses (httpx2 in 2.x, httpx in 1.x, requests
    in 0.x: without its ConnectionError an unreachable Hub leaked past HubLoadError on huggingface-hub 0.36)."""
    errors: list[type[Exception]] = [ConnectionError, TimeoutError]
    for module, names in (
        ("httpx2", ("TransportError",)),
        ("httpx", ("TransportError",)),
        ("requests.exceptions", ("ConnectionError", "Timeout")),
    ):
        for name in names:
            with contextlib.suppress(ImportError, AttributeError):
                errors.append(getattr(importlib.import_module(module), name))
    return tuple(errors)


def download_pipeline(
    repo_id: str,
    revision: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Download a pipeline repo into the Hugging Face cache (safetensors/json/md/png only); return its folder.

    Online, the repo's file list is checked first (:func:`check_repo_files`); offline
    (``HF_HUB_OFFLINE=1``) or with the Hub unreachable, the cached snapshot is used.
    """
    try:
        try:
            if constants.HF_HUB_OFFLINE:  # huggingface-hub 0.x's client does not check it on every call
                raise OfflineModeIsEnabled("HF_HUB_OFFLINE is set")
            info = HfApi().model_info(repo_id, revision=revision, token=token)
        except (OfflineModeIsEnabled, *_transport_errors()):
            info = None  # offline: snapshot_download looks in the cache
        except (RepositoryNotFoundError, RevisionNotFoundError):
            raise
        except HfHubHTTPError as exc:
            if exc.response is not None and exc.response.status_code in (401, 403):
                raise
            info = None  # the Hub is in trouble (5xx ...): snapshot_download falls back to the cache
        if info is not None:
            check_repo_files([s.rfilename for s in info.siblings or []], repo_id, revision)
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=PULL_PATTERNS,
            token=token,
            cache_dir=cache_dir,
            local_files_only=constants.HF_HUB_OFFLINE,
        )
    except (HfHubHTTPError, LocalEntryNotFoundError) as exc:
        raise _hub_error(exc, repo_id, revision, token, cache_dir) from exc
    return Path(folder)
