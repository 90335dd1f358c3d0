"""The one image decoder: bit depth, EXIF orientation, transparency, frames, formats and a bounded decoded size,
each checked against pixels written here with known values."""

import io
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cliplab.errors import CliplabError
from resources.images import decode_image, image_extensions, reduction


def png_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save)
    return buffer.getvalue()


def png48(rgb16: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one), built chunk by chunk."""
    h, w, _ = rgb16.shape
    raw = b"".join(b"\x00" + rgb16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], np.uint16)  # 0, 1, 128, 255 in 8 bits
    decoded = decode_image(png_bytes(Image.fromarray(values)))
    assert decoded.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(decoded)[0, :, 0], [0, 1, 128, 255])
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    assert np.asarray(decode_image(png_bytes(Image.fromarray(ramp)))).mean() == pytest.approx(127.5, abs=0.6)
    # what PIL's plain convert("RGB") makes of it: almost all white
    assert np.asarray(Image.open(io.BytesIO(png_bytes(Image.fromarray(ramp)))).convert("RGB")).mean() > 250


def test_sixteen_bit_rgb_keeps_its_high_bytes():
    rgb = np.zeros((4, 4, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 30000, 65535, 256
    np.testing.assert_array_equal(np.asarray(decode_image(png48(rgb)))[0, 0], [30000 >> 8, 255, 1])


def test_float_and_32_bit_images_use_their_range(tmp_path):
    unit = np.array([[0.0, 0.5, 1.0]], np.float32)
    Image.fromarray(unit, "F").save(tmp_path / "unit.tiff")
    np.testing.assert_array_equal(np.asarray(decode_image(tmp_path / "unit.tiff"))[0, :, 0], [0, 128, 255])
    wide = np.array([[-2.0, 0.0, 6.0]], np.float32)
    Image.fromarray(wide, "F").save(tmp_path / "wide.tiff")
    np.testing.assert_array_equal(np.asarray(decode_image(tmp_path / "wide.tiff"))[0, :, 0], [0, 64, 255])
    Image.fromarray(np.array([[0, 100, 255]], np.int32), "I").save(tmp_path / "i8.tiff")
    np.testing.assert_array_equal(np.asarray(decode_image(tmp_path / "i8.tiff"))[0, :, 0], [0, 100, 255])


def halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = (255, 0, 0)
    a[:, width // 2:] = (0, 0, 255)
    return Image.fromarray(a)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(tmp_path, fmt):
    stored = halves(16, 8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / f"phone.{fmt.lower()}"
    stored.save(path, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    upright = np.asarray(decode_image(path)).astype(int)
    assert upright.shape == (16, 8, 3)  # 8 wide, 16 tall
    assert np.abs(upright[2, 4] - (255, 0, 0)).max() < 20  # the stored left half is now on top
    assert np.abs(upright[13, 4] - (0, 0, 255)).max() < 20
    exif[0x0112] = 3  # upside down
    stored.save(path, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    flipped = np.asarray(decode_image(path)).astype(int)
    assert flipped.shape == (8, 16, 3) and np.abs(flipped[4, 2] - (0, 0, 255)).max() < 20


def test_transparency_is_composited_over_white():
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (255, 0, 0, 0)  # fully transparent red: white
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black: mid grey
    got = np.asarray(decode_image(png_bytes(Image.fromarray(rgba, "RGBA"))))[0]
    np.testing.assert_array_equal(got[:2], [[255, 0, 0], [255, 255, 255]])
    assert abs(int(got[2, 0]) - 127) <= 1
    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    got = np.asarray(decode_image(png_bytes(palette, transparency=0)))[0]
    np.testing.assert_array_equal(got, [[255, 255, 255], [0, 255, 0]])


def test_an_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((250, 0, 0), (0, 250, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(tmp_path / "anim.gif").n_frames == 2
    assert tuple(np.asarray(decode_image(tmp_path / "anim.gif"))[4, 4]) == (250, 0, 0)


def test_every_common_format_is_opened():
    assert {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".tga"} <= image_extensions()
    assert ".pdf" not in image_extensions()  # PIL writes PDFs but cannot read them


def test_reduction_is_the_smallest_integer_factor():
    assert reduction((100, 100), 10_000) == 1
    assert reduction((101, 100), 10_000) == 2
    assert reduction((8000, 6000), 4096 * 4096) == 2
    for (w, h), limit in [((12345, 777), 50_000), ((5, 99_999), 1000), ((3000, 3000), 1)]:
        f = reduction((w, h), limit)
        assert -(-w // f) * -(-h // f) <= limit < -(-w // (f - 1)) * -(-h // (f - 1))
        assert Image.new("L", (w, h)).reduce(f).size == (-(-w // f), -(-h // f))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_the_decoded_size_is_bounded_and_the_picture_kept(tmp_path, fmt):
    big = halves(800, 600)
    path = tmp_path / f"big.{fmt.lower()}"
    big.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    small = decode_image(path, max_pixels=10_000)
    assert small.width * small.height <= 10_000 and abs(small.width / small.height - 4 / 3) < 0.05
    a = np.asarray(small).astype(int)
    assert np.abs(a[:, : small.width // 2 - 2] - (255, 0, 0)).max() < 20
    assert np.abs(a[:, small.width // 2 + 2:] - (0, 0, 255)).max() < 20
    assert decode_image(path).size == (800, 600)  # under the default bound nothing changes


def test_undecodable_input_names_the_file(tmp_path):
    bad = tmp_path / "photo.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(CliplabError, match=re.escape(f"cannot decode image {bad}: UnidentifiedImageError")):
        decode_image(bad)
    with pytest.raises(CliplabError, match="cannot decode image image bytes"):
        decode_image(b"\x89PNG\r\n\x1a\n truncated")


PEAK_RSS = textwrap.dedent("""
    import re, sys
    from PIL import Image
    from resources.images import decode_image

    def peak_kib():  # VmHWM, not ru_maxrss: a forked child inherits its parent's ru_maxrss
        return int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))

    base = peak_kib()
    kept = []
    for path in sys.argv[2:]:
        if sys.argv[1] == "plain":
            with Image.open(path) as im:
                kept.append(im.convert("RGB").resize((224, 224)))
        else:
            kept.append(decode_image(path).resize((224, 224)))
    print(peak_kib() - base)
""")


def test_huge_images_are_decoded_within_a_bounded_memory(tmp_path):
    """Six 36-MP JPEGs: PIL's plain full-size decode vs the bounded one, peak RSS growth in separate processes."""
    paths = []
    for i in range(6):
        gradient = np.linspace(0, 255, 6000, dtype=np.uint8)
        image = Image.fromarray(np.broadcast_to(gradient[:, None, None] // (i + 1), (6000, 6000, 3)).copy())
        paths.append(str(tmp_path / f"huge{i}.jpg"))
        image.save(paths[-1], quality=70)

    def peak_kib(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", PEAK_RSS, mode, *paths], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[2])
        return int(out.stdout.strip())

    plain, bounded = peak_kib("plain"), peak_kib("bounded")
    full_image_kib = 6000 * 6000 * 3 // 1024
    assert plain >= full_image_kib  # at least one full-size RGB copy
    print(f"peak RSS growth, six 36-MP JPEGs: plain {plain / 1024:.0f} MiB, bounded {bounded / 1024:.0f} MiB")
    assert bounded <= full_image_kib / 2 and bounded <= plain / 4, (plain, bounded)
