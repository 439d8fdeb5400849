"""The ``animegan`` command: stylize files locally (no Ray), list and download weights,
and reach a running service's jobs over HTTP (``cli/jobs.py``).

    animegan stylize photo.jpg -o anime.png --style face_paint_512_v2 --size 512
    animegan stylize a.jpg b.png -o out/ --style paprika --format webp
    animegan weights list
    animegan weights download [NAME ...]
    animegan jobs submit clip.mp4 --style paprika --wait -o anime.mp4

Exit codes (``cli/output.py``): 0 success; 1 some input, download or job failed; 2 usage,
weights or device error; 3 the service refused the request (4xx); 4 the service failed
(5xx) or could not be reached.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from serve_app.cli import jobs as jobs_cli
from serve_app.cli.flags import add_option_flags, option_values
from serve_app.cli.output import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    SUFFIX_FORMATS,
    free_name,
    overwritten_input,
)
from serve_app.cli.output import err as _err
from serve_app.cli.output import out as _out
from serve_app.cli.output import progress_enabled as _progress_enabled
from serve_app.model import weights as weights_mod

logger = logging.getLogger("serve_app.cli")

EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
EXIT_CODES_HELP = (
    "exit codes: 0 success; 1 some input failed (with --server: the service refused or "
    "failed it, each reported on stderr); 2 usage, weights or device error; 4 the service "
    "could not be reached (--server)"
)

# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="animegan",
        allow_abbrev=False,
        description="AnimeGANv2 photo → anime-style picture: local stylizing, weights, and "
        "a running service's jobs.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action="version", version=f"animegan {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stylize = commands.add_parser(
        "stylize",
        allow_abbrev=False,  # --server sends the flags named in full: none is shortened
        help="stylize pictures, animations and videos locally (no Ray)",
        description="Stylize files on this machine: pictures, animated GIF/WebP/APNG "
        "and videos (MP4/MOV/MKV/WebM; audio copied, timestamps and rotation kept). One "
        "input: -o is the output file (a video's suffix picks its container). Several "
        "inputs: -o is a directory, outputs are named <stem>.<ext>. With --server, a "
        "running service does the work (videos and large prints as its jobs).",
        epilog=EXIT_CODES_HELP,
    )
    stylize.add_argument(
        "inputs", nargs="+", type=Path, metavar="IN", help="input files; - reads stdin (--server)"
    )
    stylize.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="OUT",
        help="a file, or a directory (one that exists, or a name ending in /); - writes "
        "stdout (--server); never one of the inputs",
    )
    add_option_flags(stylize, styles=list(weights_mod.REGISTRY))
    stylize.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    stylize.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    stylize.add_argument(
        "--align-corners",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="upsampling mode (default: the style's own; true for local files)",
    )
    stylize.add_argument("--seed", type=int, default=0, help="seed of `random` weights")
    stylize.add_argument(
        "--server",
        metavar="URL",
        help="send the work to the service at URL instead of stylizing here (only the "
        "stylize flags given are sent; the service's styles and defaults apply)",
    )
    stylize.add_argument(
        "--key", help="with --server: API key (default: $ANIMEGAN_API_KEY), sent as a bearer"
    )
    stylize.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="weights download timeout in seconds (default 10; --server downloads none)",
    )
    stylize.set_defaults(handler=cmd_stylize)

    weights = commands.add_parser(
        "weights", allow_abbrev=False, help="list or download the official weights"
    )
    weights_commands = weights.add_subparsers(dest="weights_command", required=True)
    listing = weights_commands.add_parser(
        "list", allow_abbrev=False, help="the registry and what is cached"
    )
    listing.set_defaults(handler=cmd_weights_list)
    download = weights_commands.add_parser(
        "download", allow_abbrev=False, help="download official weights"
    )
    download.add_argument("names", nargs="*", metavar="NAME", help="default: all of them")
    download.add_argument("--timeout", type=float, default=10.0)
    download.set_defaults(handler=cmd_weights_download)

    jobs_cli.add_jobs_commands(commands)
    return parser


# --- stylize -----------------------------------------------------------------------------


def _plan_outputs(
    inputs: Sequence[Path], output: str, fmt: str | None, moving: Mapping[Path, str]
) -> tuple[list[Path], str] | str:
    """(output paths, format), or an error message. ``output`` as typed (a trailing
    slash names a directory). ``moving``: the inputs that are videos or animations ->
    their outputs' suffix (they keep their own kind of file). No output is an input."""
    folder = Path(output)
    single = len(inputs) == 1 and not folder.is_dir() and not output.endswith(("/", "\\"))
    if single:
        refused = overwritten_input(inputs, folder)
        if refused is not None:
            return refused
        if fmt is None and inputs[0] in moving:
            return [folder], "png"  # the output's suffix says what it is
        if fmt is None:
            fmt = SUFFIX_FORMATS.get(folder.suffix.lower())
            if fmt is None:
                return (
                    f"cannot infer the output format from {output!r}; "
                    f"use a .png/.jpg/.webp suffix or --format"
                )
        return [folder], fmt
    fmt = fmt or "png"
    taken = {path.resolve() for path in inputs}  # a.jpg and a.png in one call: a-1.png
    picture_suffix = "." + EXTENSIONS[fmt]
    paths = [free_name(folder, p.stem, moving.get(p, picture_suffix), taken) for p in inputs]
    return paths, fmt


def cmd_stylize(args: argparse.Namespace) -> int:
    if args.server is not None:
        from serve_app.cli.remote import cmd_stylize_remote

        return cmd_stylize_remote(args, args.argv)
    from tqdm import tqdm

    from serve_app import config, errors
    from serve_app.cli import media as cli_media
    from serve_app.imaging import decode, pixels
    from serve_app.model import tensors
    from serve_app.model.generator import StyleModel, select_runtime

    moving = {}  # input -> its video/animation info
    for source in args.inputs:
        try:
            info = cli_media.media_info(source, config.MediaConfig())
        except (OSError, errors.ServiceError):
            continue  # reported with the picture path's own error below
        if info is not None:
            moving[source] = info
    suffixes = {
        source: cli_media.output_suffix(info, source, args.container)
        for source, info in moving.items()
    }
    plan = _plan_outputs(args.inputs, args.output, args.format, suffixes)
    if isinstance(plan, str):
        _err(f"animegan: error: {plan}")
        return EXIT_USAGE
    outputs, fmt = plan

    try:
        runtime = select_runtime(args.device, args.precision)
    except ValueError as exc:
        _err(f"animegan: error: {exc}")
        return EXIT_USAGE
    try:
        resolved = weights_mod.resolve_weights(
            args.style, seed=args.seed, timeout_s=args.timeout, progress=_progress_enabled()
        )
        generator = weights_mod.load_generator_for(resolved, align_corners=args.align_corners)
    except weights_mod.WeightsError as exc:
        _err(str(exc))
        return EXIT_USAGE
    model = StyleModel(generator, runtime)
    scene_model = None
    if args.portrait == "paste" and args.background != "photo":
        try:
            scene = weights_mod.resolve_weights(
                args.background,
                seed=args.seed,
                timeout_s=args.timeout,
                progress=_progress_enabled(),
            )
            scene_generator = weights_mod.load_generator_for(
                scene, align_corners=args.align_corners
            )
        except weights_mod.WeightsError as exc:
            _err(str(exc))
            return EXIT_USAGE
        scene_model = StyleModel(scene_generator, runtime)

    def run(model: StyleModel, pictures: list) -> list:
        return tensors.from_model_batch(model(tensors.to_model_batch(pictures)))

    logger.info(
        "style %s (%s), %s %s, %d input(s)",
        args.style,
        resolved.digest[:12],
        runtime.device,
        runtime.precision,
        len(args.inputs),
    )

    limits = config.ImageLimits()
    failed = 0
    started = time.monotonic()
    pairs = list(zip(args.inputs, outputs, strict=True))
    bar = tqdm(
        pairs,
        unit="img",
        desc="stylize",
        disable=len(pairs) < 2 or not _progress_enabled(),
    )
    for source, target in bar:
        try:
            if source in moving:
                _media(
                    source, target, moving[source], args, resolved.digest, lambda p: run(model, p)
                )
                continue
            if args.portrait == "off":
                decoded = decode.decode_resized(source.read_bytes(), limits, args.size)
                rgb = run(model, [decoded.rgb])[0]
                rgb = pixels.apply_controls(decoded.rgb, rgb, args.strength, args.preserve_color)
                alpha = decoded.alpha
            else:
                rgb, alpha = _portrait(source.read_bytes(), args, limits, model, scene_model, run)
            data = pixels.encode_image(rgb, alpha, fmt, args.quality)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except (OSError, errors.ServiceError, ValueError) as exc:
            failed += 1
            _err(f"{source}: {_one_line(exc)}")
            continue
        logger.info("%s -> %s (%d×%d)", source, target, rgb.shape[1], rgb.shape[0])
    bar.close()
    logger.info(
        "%d of %d done in %.1f s", len(pairs) - failed, len(pairs), time.monotonic() - started
    )
    if failed:
        _err(f"animegan: {failed} of {len(pairs)} input(s) failed")
        return EXIT_FAILED
    return EXIT_OK


def _media(source: Path, target: Path, info, args: argparse.Namespace, digest: str, run) -> None:
    """One video or animation, with a progress bar of its frames."""
    from tqdm import tqdm

    from serve_app.cli import media as cli_media
    from serve_app.options import StylizeOptions

    if args.portrait != "off":
        raise ValueError("--portrait takes still pictures only")
    container = cli_media.output_container(info, target, args.container)
    options = StylizeOptions(**{**option_values(args), "format": "png", "container": container})
    bar = tqdm(total=info.frames, unit="frame", desc=source.name, disable=not _progress_enabled())
    try:
        output = cli_media.stylize_media(
            source,
            target,
            info,
            options,
            run,
            digest,
            lambda counts: bar.update(counts.done - bar.n),
        )
    finally:
        bar.close()
    logger.info(
        "%s -> %s (%d frames, %d×%d, %.1f s)",
        source,
        target,
        output.frames,
        output.width,
        output.height,
        output.duration_s,
    )


def _portrait(data: bytes, args: argparse.Namespace, limits, model, scene_model, run):
    """One picture in portrait mode, as the service makes it: (rgb, alpha)."""
    from serve_app import config, errors
    from serve_app.imaging import decode, faces, portrait

    settings = config.PortraitConfig()
    full = decode.decode_upload(data, limits)
    found = faces.detect_faces(full.rgb, settings)
    if not found and args.no_face == "error":
        raise errors.NoFace("no face found (--no-face whole stylizes the whole picture)")
    logger.info("%d face(s) found", len(found))
    prepared = portrait.prepare(full, found, args.portrait, args.size, settings)
    del full
    # The faces go through the model as one batch: they share the face size.
    styled = run(model, prepared.crops or [prepared.photo.rgb])
    scene = None
    if scene_model is not None and prepared.crops:
        scene = run(scene_model, [prepared.photo.rgb])[0]
    return portrait.finish(
        prepared,
        styled,
        scene,
        args.portrait,
        args.size,
        args.strength,
        args.preserve_color,
        settings.feather,
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    return text or type(exc).__name__


# --- weights -----------------------------------------------------------------------------


def cmd_weights_list(args: argparse.Namespace) -> int:
    directory = weights_mod.weights_dir()
    rows = [("NAME", "SHA1", "ALIGN_CORNERS", "CACHED", "URL")]
    for name, entry in weights_mod.REGISTRY.items():
        path = directory / entry.filename
        if not path.is_file():
            cached = "-"
        elif weights_mod.git_blob_sha1_file(path) == entry.blob_sha1:
            cached = str(path)
        else:
            cached = f"CORRUPT {path}"
        rows.append((name, entry.blob_sha1, str(entry.align_corners), cached, entry.url()))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    _out(f"weights directory: {directory}")
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        _out("  ".join([*cells, row[-1]]))
    return EXIT_OK


def cmd_weights_download(args: argparse.Namespace) -> int:
    names = args.names or list(weights_mod.REGISTRY)
    failed = 0
    for name in names:
        if name not in weights_mod.REGISTRY:
            known = ", ".join(weights_mod.REGISTRY)
            _err(f"{name}: not an official style (known: {known})")
            failed += 1
            continue
        try:
            resolved = weights_mod.resolve_weights(
                name, timeout_s=args.timeout, progress=_progress_enabled()
            )
        except weights_mod.WeightsError as exc:
            _err(str(exc))
            failed += 1
            continue
        _out(f"{name}: {resolved.path}")
    if failed:
        _err(f"animegan: {failed} of {len(names)} download(s) failed")
        return EXIT_FAILED
    return EXIT_OK


# --- entry point -------------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("animegan-serve")
    except PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv  # which flags were given (the remote mode sends only those)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args))
    except ModuleNotFoundError as missing:
        # The light install (the client, the remote mode) has none of the `server` extra.
        if (missing.name or "serve_app").startswith("serve_app"):
            raise
        _err(
            f"animegan: this command runs the model here and needs the server install "
            f"({missing.name} is missing): pip install 'animegan-serve[server]'; "
            f"or send the work to a service with --server URL"
        )
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
