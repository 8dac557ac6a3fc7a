"""The ``ddpm-hub`` command. Thin: every subcommand calls the library."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import torch
from PIL import Image

from . import __version__, evaluate, plugins
from .conditioning import DEFAULT_GUIDANCE_SCALE
from .datasets import BUILTIN_DATASET
from .devices import allow_fast_float32, select_device
from .hub import HubPushError, deploy_space, push
from .images import make_grid
from .loading import load_pipeline
from .pipeline import NonFiniteSampleError
from .plugins import plugin_info
from .train import main as train_main


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="where to sample: auto (the best available: cuda, xpu, mps, else cpu), cpu, cuda, cuda:N, mps, xpu",
    )


def _sampling_device(args: argparse.Namespace, command: str):
    """``--device`` as a torch.device (TF32 allowed on CUDA), or SystemExit with one line."""
    try:
        device = select_device(args.device)
    except ValueError as exc:
        raise SystemExit(f"ddpm-hub {command}: error: --device: {exc}") from None
    allow_fast_float32(device)
    return device


class RegisteredNames:
    """The names in a plugin registry, read when argparse first needs them (help, or checking a value), so
    that `ddpm-hub --help` and commands that take no such option do not load the plugins."""

    def __init__(self, kind: str):
        self.kind = kind

    def _names(self) -> list[str]:
        return sorted(getattr(plugins, f"get_{self.kind}")())

    def __iter__(self):
        return iter(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()


def _sampler_name(name: str) -> str:
    """A registered sampler's name; otherwise the registry's message (unknown, or its plugin is disabled)."""
    try:
        plugins.get_sampler(
            name
        )  # a plugin's sampler is built once here, so a broken one fails before any work
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return name


def _add_sample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample an image grid from a pipeline folder, run folder or Hub repo")
    p.add_argument("model", help="a pipeline folder, a training run folder, or a Hub repo id (NS/NAME)")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument(
        "--sampler",
        default="ddpm",
        type=_sampler_name,
        choices=RegisteredNames("samplers"),
        metavar="NAME",
        help="a registered sampler: %(choices)s (default: %(default)s)",
    )
    p.add_argument("--steps", type=int, default=None, help="reverse steps (default: the sampler's)")
    p.add_argument("--seed", type=int, default=0)
    _add_conditioning(p)
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit sha)")
    p.add_argument("--out", type=Path, default=Path("grid.png"))
    _add_device(p)
    p.set_defaults(func=cmd_sample)


class UsageError(SystemExit):
    """Exit 2 (a bad argument, as argparse) after printing the message; ``str()`` is the message."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _fail(command: str, message: object, code: int = 1) -> NoReturn:
    """One line on stderr and exit ``code``: 2 for a bad argument (as argparse), 1 for a failure."""
    line = f"ddpm-hub {command}: error: {message}"
    if code == 1:
        raise SystemExit(line)  # Python prints it and exits 1
    print(line, file=sys.stderr)
    raise UsageError(line)


def _check_out(command: str, path: Path, image: bool) -> None:
    """Exit 2 unless ``--out`` is a file that can be written (an image format for ``image``), before any work."""
    if path.is_dir():
        name = "grid.png" if image else "report.json"
        _fail(command, f"--out {path} is a folder; give a file name, such as {path / name}", 2)
    if image:
        fmt = Image.registered_extensions().get(path.suffix.lower())
        if fmt not in Image.SAVE:
            _fail(
                command,
                f"--out {path} needs an image file extension that PIL can write: .png, .jpg or .webp",
                2,
            )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(f"{path} is read-only")
    except OSError as exc:
        _fail(command, f"--out {path} cannot be written ({exc.strerror or exc}); choose another location", 2)


def _load(command: str, model: str, revision: str | None):
    """``load_pipeline`` with its errors as one line (exit 1)."""
    try:
        return load_pipeline(model, revision=revision)
    except (OSError, ValueError, ImportError) as exc:  # HubLoadError and FileNotFoundError are OSErrors
        _fail(command, exc)


def _steps(command: str, pipe, sampler: str | None, steps: int | None) -> int:
    """The sampler's steps for this model, checked against its registry entry (exit 2 when bad)."""
    try:
        return pipe.resolve_steps(sampler, steps)
    except ValueError as exc:
        option = "--sampler" if "unknown sampler" in str(exc) else "--steps"
        _fail(command, f"{option}: {exc}", 2)


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is running out of memory (CUDA/MPS/XPU's OutOfMemoryError, the CPU allocator's error)."""
    return isinstance(exc, MemoryError | torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


def _fail_memory(command: str, count: int, option: str, device: object) -> NoReturn:
    _fail(
        command,
        f"out of memory generating {count} images at once on {device}: give a smaller {option} "
        f"(such as {max(1, count // 4)})",
    )


def _add_conditioning(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--class",
        dest="classes",
        nargs="+",
        default=None,
        metavar="CLASS",
        help="class-conditional models: the class (name or id) of every image, or several, cycled over the images",
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help=f"classifier-free guidance weight (1: none; default {DEFAULT_GUIDANCE_SCALE})",
    )


def _class_labels(pipe, classes: list[str] | None, num_images: int) -> list[int] | None:
    """``--class`` values (names, else ids) as one class id per image, cycled; SystemExit when unusable."""
    if classes is None:
        return None
    names = pipe.class_names or []
    wanted = [c if c in names or not c.lstrip("-").isdigit() else int(c) for c in classes]
    try:
        ids = pipe.get_label_ids(wanted)
    except ValueError as exc:
        _fail("sample", f"--class: {exc}", 2)
    return [ids[i % len(ids)] for i in range(num_images)]


def cmd_sample(args: argparse.Namespace) -> int:
    if args.num_images < 1:
        _fail("sample", f"--num-images must be at least 1, got {args.num_images}", 2)
    if args.guidance_scale is not None and args.classes is None:
        _fail(
            "sample",
            "--guidance-scale needs --class (guidance steers the images towards the class asked for)",
            2,
        )
    device = _sampling_device(args, "sample")
    _check_out("sample", args.out, image=True)
    pipe = _load("sample", args.model, args.revision).to(device)
    steps = _steps("sample", pipe, args.sampler, args.steps)
    labels = _class_labels(pipe, args.classes, args.num_images)
    try:
        images = pipe(
            batch_size=args.num_images,
            # a CPU generator: the same seed gives the same starting noise on every device
            generator=torch.Generator(device="cpu").manual_seed(args.seed),
            num_inference_steps=steps,
            sampler=args.sampler,
            output_type="pt",
            class_labels=labels,
            guidance_scale=args.guidance_scale,
        ).images
    except NonFiniteSampleError as exc:
        _fail("sample", f"{exc}; nothing was written to {args.out}")
    except ValueError as exc:
        _fail("sample", exc)
    except (RuntimeError, MemoryError) as exc:
        if not _out_of_memory(exc):
            raise
        _fail_memory("sample", args.num_images, "--num-images", device)
    try:
        make_grid(images).save(args.out)
    except OSError as exc:
        _fail("sample", f"could not write {args.out}: {exc}")
    print(f"wrote {args.num_images} images to {args.out} (sampled on {device})")
    return 0


def _add_plugins(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plugins",
        help="list the installed plugins (JSON): distribution, version, hooks, names, and what is broken",
        description="List the installed ddpm-hub plugins as JSON. A plugin that failed to import or register is "
        "listed with its `error` (it is disabled; everything else works); `problems` names what fails when run "
        "(each schedule at small T, each sampler built from a small config, each backbone built with its "
        "defaults and run once); `warnings` names hook-like functions without @hookimpl and names two plugins "
        "register. Exits 0 either way.",
    )
    p.add_argument("--all", action="store_true", help="include ddpm-hub's built-in plugins")
    p.set_defaults(func=cmd_plugins)


def cmd_plugins(args: argparse.Namespace) -> int:
    info = plugin_info(include_builtins=args.all)
    print(json.dumps(info, indent=2))
    for plugin in info:  # a disabled plugin's error was already warned about when the plugins loaded
        who = f"plugin {plugin['name']!r} (distribution {plugin['distribution']!r})"
        for message in plugin.get("problems", []) + plugin.get("warnings", []):
            print(f"warning: {who}: {message}", file=sys.stderr)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        add_help=False,
        help="train a DDPM (default: the built-in MNIST-5k config); --help lists every config key",
        description="Train in this process; the options are those of `python -m ddpm_hub.train`.",
    )
    p.set_defaults(func=cmd_train, passthrough=True)


def cmd_train(args: argparse.Namespace) -> int:
    return train_main(args.rest)


def _add_space(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "space",
        help="run the Gradio Space (spaces/app.py) locally, or deploy it as a Hugging Face Space (--deploy)",
    )
    p.add_argument(
        "--model",
        default=None,
        help="default model: a pipeline or run folder, or a Hub repo id (default: the bundled one)",
    )
    p.add_argument(
        "--deploy",
        metavar="NAMESPACE/NAME",
        default=None,
        help="create or update this Space repo on the Hub (gradio SDK) with the app, ddpm_hub and the "
        "bundled model(s), then print its URL; nothing runs locally",
    )
    p.add_argument("--private", action="store_true", help="with --deploy: create the Space private")
    p.add_argument(
        "--token", default=None, help="with --deploy: a Hub token (default: HF_TOKEN or the login)"
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 to serve a network)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument(
        "--allow-local-paths",
        action="store_true",
        default=None,
        help="let visitors load folders on this machine (also DDPM_HUB_SPACE_ALLOW_LOCAL=1); off by default",
    )
    p.set_defaults(func=cmd_space)


def space_app_path() -> Path:
    """spaces/app.py of this source checkout (the Space is not part of the installed package)."""
    return Path(__file__).resolve().parent.parent / "spaces" / "app.py"


def cmd_deploy_space(args: argparse.Namespace) -> int:
    if args.allow_local_paths:
        raise SystemExit(
            "ddpm-hub space: error: --allow-local-paths cannot be used with --deploy: a public Space never lets "
            "visitors load folders on its server"
        )
    app_path = space_app_path()
    if not app_path.is_file():
        raise SystemExit(
            f"ddpm-hub space: error: no Space at {app_path}: --deploy uploads spaces/ of a ddpm-hub source checkout"
        )
    try:
        url, commit = deploy_space(
            app_path.parent, args.deploy, model=args.model, private=args.private, token=args.token
        )
    except (HubPushError, ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"ddpm-hub space: error: {exc}") from exc
    print(f"deployed the Space to {args.deploy} (commit {commit.oid})")
    print(url)
    return 0


def cmd_space(args: argparse.Namespace) -> int:
    if args.deploy is not None:
        return cmd_deploy_space(args)
    if args.private or args.token:
        raise SystemExit("ddpm-hub space: error: --private and --token go with --deploy NAMESPACE/NAME")
    if not 1 <= args.port <= 65535:
        _fail("space", f"--port must be between 1 and 65535, got {args.port}", 2)
    if args.model:
        model = Path(args.model).expanduser()
        local = model.exists() or args.model.startswith((".", "/", "~", "\\"))
        if not model.is_dir() and (local or (model.parent != Path(".") and model.parent.is_dir())):
            parent = f" (its parent {model.parent} exists)" if model.parent.is_dir() else ""
            what = (
                f"{model} is a file, not a folder"
                if model.exists()
                else f"there is no folder {model}{parent}"
            )
            _fail(
                "space",
                f"--model: {what}: give a pipeline or training run folder, or a Hub repo id (NAMESPACE/NAME)",
                2,
            )
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("the Space needs gradio: pip install 'ddpm-hub[space]'") from None
    app_path = space_app_path()
    if not app_path.is_file():
        raise SystemExit(
            f"no Space at {app_path}: `ddpm-hub space` runs spaces/app.py from a ddpm-hub source checkout "
            "(git clone, then pip install -e '.[space]')"
        )
    spec = importlib.util.spec_from_file_location("ddpm_hub_space_app", app_path)
    app = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = app  # dataclasses look their module up there
    spec.loader.exec_module(app)
    argv = ["--host", args.host, "--port", str(args.port)]
    if args.model:
        argv += ["--model", args.model]
    if args.allow_local_paths:
        argv.append("--allow-local-paths")
    try:
        app.main(argv)
    except app.SpaceInputError as exc:
        _fail("space", f"--model: {exc.message}", 2)
    except OSError as exc:  # the port is taken, or the host cannot be bound
        _fail("space", f"cannot serve on {args.host}:{args.port} ({exc}); choose another --port or --host")
    return 0


def _add_push(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="push a trained pipeline (run folder or pipeline folder) with its model card to the Hub",
        description="Upload the pipeline folder (configs, safetensors weights), the model card, the sample grid "
        "and the loss curve to a Hub model repo; never checkpoints, optimizer state or logs.",
    )
    p.add_argument("path", type=Path, help="a training run folder or a pipeline folder")
    p.add_argument("--repo-id", required=True, help="the Hub repo, NAMESPACE/NAME (created if missing)")
    p.add_argument(
        "--private", action="store_true", help="create the repo private (when it does not exist yet)"
    )
    p.add_argument("--revision", default=None, help="the branch to push to (created from main if missing)")
    p.add_argument("--commit-message", default=None)
    p.add_argument(
        "--license",
        default=None,
        help="the weights' license, a Hub license id such as mit (default: the card's, apache-2.0 for a new card)",
    )
    p.add_argument("--token", default=None, help="a Hub token (default: HF_TOKEN or the logged-in token)")
    p.set_defaults(func=cmd_push)


def cmd_push(args: argparse.Namespace) -> int:
    try:
        info = push(
            args.path,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            token=args.token,
            license=args.license,
        )
    except (HubPushError, ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"ddpm-hub push: error: {exc}") from exc
    print(f"pushed {args.path} to {args.repo_id}" + (f" ({args.revision})" if args.revision else ""))
    print(f"commit {info.oid}: {info.commit_url}")
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="sample N images from a model and score them against real images (JSON)")
    p.add_argument("model", help="a pipeline folder, a training run folder, or a Hub repo id (NS/NAME)")
    p.add_argument(
        "--dataset",
        default=BUILTIN_DATASET,
        help=f"reference images: {BUILTIN_DATASET} (the built-in held-out split), a .parquet file or an image folder",
    )
    p.add_argument("--num-samples", type=int, default=1000, help="images to generate (compare at equal N)")
    p.add_argument(
        "--sampler",
        default=None,
        type=_sampler_name,
        choices=RegisteredNames("samplers"),
        metavar="NAME",
        help="a registered sampler: %(choices)s (default: the model's own scheduler)",
    )
    p.add_argument("--steps", type=int, default=None, help="reverse steps (default: the sampler's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=256, help="images generated per pipeline call")
    p.add_argument(
        "--metric",
        choices=("mnist", "inception"),
        default="mnist",
        help="mnist: offline classifier Frechet distance/KID (MNIST-like data); inception: FID/KID "
        "(not bundled: exits with how to get it)",
    )
    p.add_argument(
        "--class-accuracy",
        action="store_true",
        help="class-conditional MNIST models: generate every class equally often and report the share of images "
        "the shipped classifier assigns to the class asked for",
    )
    p.add_argument(
        "--guidance-scale",
        type=float,
        default=None,
        help="classifier-free guidance weight for --class-accuracy (1: none; default: the pipeline's)",
    )
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit sha)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    _add_device(p)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    if args.num_samples < 2:
        _fail(
            "eval",
            f"--num-samples must be at least 2 (a Gaussian is fitted to the samples), got {args.num_samples}",
            2,
        )
    if args.batch_size < 1:
        _fail("eval", f"--batch-size must be at least 1, got {args.batch_size}", 2)
    device = _sampling_device(args, "eval")
    if args.metric == "inception":
        try:
            evaluate.inception_features(None)
        except RuntimeError as exc:
            _fail("eval", exc, 2)
    if args.out is not None:
        _check_out("eval", args.out, image=False)
    pipe = _load("eval", args.model, args.revision).to(device)
    steps = _steps("eval", pipe, args.sampler, args.steps)
    try:
        evaluate.check_image_shape(pipe.image_shape, args.dataset)
        reference = evaluate.Reference.from_dataset(args.dataset)
    except (FileNotFoundError, ValueError) as exc:
        _fail("eval", f"--dataset: {exc}", 2)
    labels = None
    if args.class_accuracy:
        if pipe.num_classes is None:
            _fail(
                "eval",
                f"--class-accuracy needs a class-conditional model; {args.model} is unconditional (its unet has "
                "no num_class_embeds)",
                2,
            )
        try:
            evaluate.digit_of_each_class(pipe.class_names)
        except ValueError as exc:
            _fail("eval", f"--class-accuracy: {exc}", 2)
        labels = evaluate.balanced_labels(pipe.num_classes, args.num_samples)
    elif args.guidance_scale is not None:
        _fail("eval", "--guidance-scale applies to --class-accuracy (class-conditional sampling) only", 2)
    try:
        images = evaluate.generate(
            pipe,
            args.num_samples,
            args.sampler,
            steps,
            args.seed,
            args.batch_size,
            class_labels=labels,
            guidance_scale=args.guidance_scale,
        )
    except NonFiniteSampleError as exc:
        _fail("eval", f"{exc}; no score was computed")
    except (RuntimeError, MemoryError) as exc:
        if not _out_of_memory(exc):
            raise
        _fail_memory("eval", min(args.batch_size, args.num_samples), "--batch-size", device)
    report = evaluate.evaluate_images(images, reference).to_dict()
    if labels is not None:
        report.update(evaluate.class_accuracy(images, labels, pipe.class_names))
        report["guidance_scale"] = (
            DEFAULT_GUIDANCE_SCALE if args.guidance_scale is None else args.guidance_scale
        )
    report.update(
        model=str(args.model), sampler=args.sampler, steps=steps, seed=args.seed, device=str(device)
    )
    text = json.dumps(report, indent=2)
    if args.out is not None:
        try:
            args.out.write_text(text + "\n")
        except OSError as exc:
            _fail("eval", f"could not write {args.out}: {exc}")
    print(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddpm-hub", description=__doc__, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"ddpm-hub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_sample, _add_train, _add_plugins, _add_push, _add_space, _add_eval):
        add(sub)
    for command in sub.choices.values():  # `eval --class 3` must not be read as --class-accuracy
        command.allow_abbrev = False
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    plugins.one_line_warnings()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "passthrough", False):  # `ddpm-hub train --max_steps 10 ...`: the trainer parses its own
        args.rest = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
