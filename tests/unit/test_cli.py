"""The ``animegan`` command, run in-process through ``main([...])``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve_app.cli.main import _plan_outputs, main
from serve_app.model import weights
from tests.support.media import apng_with_broken_animation
from tests.support.pictures import sample_photos

REPO = Path(__file__).resolve().parents[2]


def _synthetic(path: Path, size=(300, 200), mode="RGB") -> Path:
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], -1).astype(np.uint8)
    image = Image.fromarray(rgb)
    if mode == "RGBA":
        image.putalpha(Image.fromarray(np.where(x < w // 2, 255, 64).astype(np.uint8)))
    image.save(path)
    return path


@pytest.fixture
def photo() -> Path:
    return sample_photos()[0]


def test_stylize_one_file(photo, tmp_path, caplog):
    out = tmp_path / "out" / "anime.png"
    rc = main(["stylize", str(photo), "-o", str(out), "--style", "random", "--size", "256"])
    assert rc == 0
    with Image.open(out) as result, Image.open(photo) as source:
        assert result.format == "PNG"
        assert max(result.size) == 256
        w, h = source.size
        expected_short = round(min(w, h) * 256 / max(w, h) / 4) * 4
        assert min(result.size) == expected_short
        assert (result.width >= result.height) == (w >= h)
    assert "RANDOM WEIGHTS" in caplog.text


def test_stylize_format_from_suffix(tmp_path):
    source = _synthetic(tmp_path / "in.png")
    out = tmp_path / "anime.jpg"
    assert main(["stylize", str(source), "-o", str(out), "--style", "random", "--size", "64"]) == 0
    with Image.open(out) as result:
        assert result.format == "JPEG"
        assert result.size == (64, 44)  # 300×200 -> 64 × round(42.7 / 4) * 4


def test_stylize_controls(tmp_path, capsys):
    from serve_app import config
    from serve_app.imaging import decode

    source = _synthetic(tmp_path / "in.png")
    photo_only = tmp_path / "photo.png"
    args = ["stylize", str(source), "--style", "random", "--size", "64"]
    assert main([*args, "-o", str(photo_only), "--strength", "0"]) == 0
    resized = decode.decode_resized(source.read_bytes(), config.ImageLimits(), 64).rgb
    assert np.array_equal(np.asarray(Image.open(photo_only)), resized)  # strength 0: the photo
    full, muted = tmp_path / "full.png", tmp_path / "muted.png"
    assert main([*args, "-o", str(full)]) == 0
    assert main([*args, "-o", str(muted), "--preserve-color"]) == 0
    assert not np.array_equal(np.asarray(Image.open(full)), np.asarray(Image.open(muted)))
    with pytest.raises(SystemExit):
        main([*args, "-o", str(full), "--strength", "1.5"])
    assert "must be 0..1" in capsys.readouterr().err


def test_stylize_unknown_suffix_is_a_usage_error(tmp_path, capsys):
    source = _synthetic(tmp_path / "in.png")
    rc = main(["stylize", str(source), "-o", str(tmp_path / "out.xyz"), "--style", "random"])
    assert rc == 2
    assert "--format" in capsys.readouterr().err


def test_stylize_many_into_directory_keeps_alpha(tmp_path):
    a = _synthetic(tmp_path / "a.jpg")
    b = _synthetic(tmp_path / "b.png", size=(120, 160), mode="RGBA")
    out_dir = tmp_path / "results"
    rc = main(
        [
            *("stylize", str(a), str(b), "-o", str(out_dir)),
            *("--style", "random", "--size", "64", "--format", "webp"),
        ]
    )
    assert rc == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["a.webp", "b.webp"]
    with Image.open(out_dir / "a.webp") as ra, Image.open(out_dir / "b.webp") as rb:
        assert ra.format == rb.format == "WEBP"
        assert ra.size == (64, 44)
        assert rb.size == (48, 64)
        assert rb.mode == "RGBA"  # transparency kept


def test_stylize_bad_file_continues(tmp_path, capsys):
    good = _synthetic(tmp_path / "good.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image")
    missing = tmp_path / "missing.jpg"
    out_dir = tmp_path / "results"
    rc = main(
        [
            *("stylize", str(bad), str(missing), str(good), "-o", str(out_dir)),
            *("--style", "random", "--size", "64"),
        ]
    )
    assert rc == 1
    assert (out_dir / "good.png").is_file()
    assert not (out_dir / "bad.png").exists()
    err_lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith(f"{bad}: ") for line in err_lines)
    assert any(line.startswith(f"{missing}: ") for line in err_lines)


def test_stylize_weights_error_exits_2(tmp_path, capsys):
    source = _synthetic(tmp_path / "in.png")
    rc = main(
        ["stylize", str(source), "-o", str(tmp_path / "o.png"), "--style", "/no/such/file.pt"]
    )
    assert rc == 2
    assert "/no/such/file.pt" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_stylize_with_downloaded_registry_style(served_style, tmp_path):
    source = _synthetic(tmp_path / "in.png")
    out = tmp_path / "o.png"
    rc = main(
        ["stylize", str(source), "-o", str(out), "--style", served_style.name, "--size", "64"]
    )
    assert rc == 0
    assert out.is_file()
    assert served_style.path.is_file()
    assert served_style.server.request_count == 1


def test_weights_list(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path))
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("face_paint_512_v2", "face_paint_512_v1", "celeba_distill", "paprika"):
        assert name in out
        assert weights.REGISTRY[name].blob_sha1 in out
        assert weights.REGISTRY[name].url() in out
    assert str(tmp_path) in out


def test_weights_download(served_style, capsys):
    assert main(["weights", "download", served_style.name]) == 0
    assert f"{served_style.name}: {served_style.path}" in capsys.readouterr().out
    assert served_style.path.read_bytes() == served_style.data

    # `weights list` now shows it cached.
    assert main(["weights", "list"]) == 0
    assert str(served_style.path) in capsys.readouterr().out


def test_weights_download_defaults_to_all(served_style, capsys, monkeypatch):
    for name in [n for n in weights.REGISTRY if n != served_style.name]:
        monkeypatch.delitem(weights.REGISTRY, name)
    assert main(["weights", "download"]) == 0
    assert str(served_style.path) in capsys.readouterr().out


def test_weights_download_failure_is_nonzero(served_style, capsys):
    served_style.server.mode = "404"
    assert main(["weights", "download", served_style.name, "no_such_style"]) == 1
    err = capsys.readouterr().err
    assert served_style.url in err
    assert "no_such_style" in err
    assert not served_style.path.exists()


def test_python_dash_m_works(tmp_path):
    env = dict(os.environ, **{weights.WEIGHTS_DIR_ENV: str(tmp_path)})
    result = subprocess.run(
        [sys.executable, "-m", "serve_app.cli", "weights", "list"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "paprika" in result.stdout


def test_stylize_a_video_into_another_container_keeps_frames_and_audio(tmp_path):
    from tests.support.media import audio_packets, make_h264_aac_mp4, video_timestamps

    clip = make_h264_aac_mp4(tmp_path / "clip.mp4", seconds=1.0)
    out = tmp_path / "anime.mkv"
    rc = main(["stylize", str(clip), "-o", str(out), "--style", "random", "--size", "64"])
    assert rc == 0
    assert audio_packets(out) == audio_packets(clip)
    assert len(video_timestamps(out)) == len(video_timestamps(clip)) == 10


def test_stylize_mixed_inputs_into_a_directory_keeps_each_kind(tmp_path):
    from tests.support.media import make_animation, make_vp9_opus_webm

    clip = make_vp9_opus_webm(tmp_path / "clip.webm", seconds=0.5)
    gif = make_animation(tmp_path / "a.gif", fmt="gif", frames=4)
    photo = _synthetic(tmp_path / "p.png")
    out = tmp_path / "out"
    rc = main(
        [
            "stylize",
            str(clip),
            str(gif),
            str(photo),
            "-o",
            f"{out}/",
            "--style",
            "random",
            "--size",
            "64",
        ]
    )
    assert rc == 0
    assert sorted(path.name for path in out.iterdir()) == ["a.gif", "clip.webm", "p.png"]
    with Image.open(out / "a.gif") as animation:
        assert animation.n_frames == 4


def test_stylize_an_animation_to_another_format_fails_clearly(tmp_path, capsys):
    from tests.support.media import make_animation

    gif = make_animation(tmp_path / "a.gif", fmt="gif", frames=3)
    rc = main(["stylize", str(gif), "-o", str(tmp_path / "a.mp4"), "--style", "random"])
    assert rc == 1
    assert "stays one" in capsys.readouterr().err


def test_stylize_a_video_into_the_container_asked_for(tmp_path, capsys):
    import av

    from tests.support.media import make_animation, make_h264_aac_mp4

    clip = make_h264_aac_mp4(tmp_path / "clip.mp4", seconds=0.5)
    photo = _synthetic(tmp_path / "p.png")
    out = tmp_path / "out"
    args = ["--style", "random", "--size", "64", "--container", "matroska"]
    assert main(["stylize", str(clip), str(photo), "-o", str(out), *args]) == 0
    assert sorted(path.name for path in out.iterdir()) == ["clip.mkv", "p.png"]
    with av.open(str(out / "clip.mkv")) as written:
        assert "matroska" in written.format.name
    gif = make_animation(tmp_path / "a.gif", fmt="gif", frames=3)
    assert main(["stylize", str(gif), "-o", str(tmp_path / "b.gif"), *args]) == 1
    assert "--container is for videos" in capsys.readouterr().err


def test_stylize_an_apng_whose_animation_is_broken_makes_its_default_image(tmp_path):
    source = apng_with_broken_animation(tmp_path)  # the service answers it as a still too
    out = tmp_path / "anime.png"
    rc = main(["stylize", str(source), "-o", str(out), "--style", "random", "--size", "64"])
    assert rc == 0
    with Image.open(out) as result:
        assert result.size == (64, 48) and not getattr(result, "is_animated", False)


def test_an_output_never_replaces_an_input(tmp_path, capsys):
    source = _synthetic(tmp_path / "in.png")
    before = source.read_bytes()
    assert main(["stylize", str(source), "-o", str(tmp_path / "." / "in.png")]) == 2
    assert "is the input" in capsys.readouterr().err and source.read_bytes() == before
    inputs = [tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "clip.mp4"]
    paths, _ = _plan_outputs(inputs, str(tmp_path), None, {inputs[2]: ".mp4"})
    assert [path.name for path in paths] == ["a-1.png", "a-2.png", "clip-1.mp4"]


def test_an_output_ending_in_a_slash_is_a_directory(tmp_path):
    folder = str(tmp_path / "new") + "/"
    assert _plan_outputs([tmp_path / "x.jpg"], folder, None, {}) == (
        [tmp_path / "new" / "x.png"],
        "png",
    )


def test_a_shortened_flag_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as ended:
        main(["stylize", "x.jpg", "-o", str(tmp_path / "y.png"), "--preserve"])
    assert ended.value.code == 2 and "--preserve" in capsys.readouterr().err
