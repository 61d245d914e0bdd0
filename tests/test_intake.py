"""Tests for dreambooth.data.intake, using real image files written by Pillow (no mocks)."""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from dreambooth.data.intake import (
    Intake,
    Photo,
    check_output_dir,
    fit_square,
    read_image_folder,
    to_pil,
    to_rgb,
    to_tensor,
)
from dreambooth.errors import DreamboothError

DREAMBENCH = Path(__file__).resolve().parents[2] / "shared" / "dreambench"
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def px(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    return tuple(int(v) for v in image.getpixel(xy))


def near(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def bands(size: tuple[int, int], colors: list[tuple[int, int, int]], vertical: bool = False) -> Image.Image:
    """Equal stripes of colours, left to right (or top to bottom when vertical)."""
    w, h = size
    image = Image.new("RGB", size)
    for i, color in enumerate(colors):
        if vertical:
            image.paste(color, (0, i * h // len(colors), w, (i + 1) * h // len(colors)))
        else:
            image.paste(color, (i * w // len(colors), 0, (i + 1) * w // len(colors), h))
    return image


def only_photo(folder: Path) -> Image.Image:
    intake = read_image_folder(folder)
    assert len(intake.photos) == 1 and intake.skipped == []
    image = intake.photos[0].image
    assert image.mode == "RGB"
    return image


# --- read_image_folder: formats and modes -------------------------------------------------


def test_good_jpeg(tmp_path: Path) -> None:
    Image.new("RGB", (64, 48), (200, 100, 50)).save(tmp_path / "a.jpg", quality=95)
    intake = read_image_folder(tmp_path)
    assert [p.path.name for p in intake.photos] == ["a.jpg"]
    assert isinstance(intake.photos[0], Photo)
    image = intake.photos[0].image
    assert image.size == (64, 48) and image.mode == "RGB"
    assert near(px(image, (32, 24)), (200, 100, 50), tol=4)


def test_exif_orientation_6_is_rotated_clockwise(tmp_path: Path) -> None:
    # Stored 60x40 with red on the left; orientation 6 means "rotate 90 degrees clockwise to display",
    # which puts the left (red) edge at the top.
    stored = bands((60, 40), [RED, BLUE])
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = only_photo(tmp_path)
    assert image.size == (40, 60)
    assert near(px(image, (20, 5)), RED) and near(px(image, (20, 55)), BLUE)


def test_rgba_transparency_composited_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (30, 10), (0, 0, 0, 0))  # fully transparent *black*
    rgba.paste((10, 20, 30, 255), (10, 0, 20, 10))
    rgba.paste((0, 0, 0, 128), (20, 0, 30, 10))  # half-transparent black over white -> mid grey
    rgba.save(tmp_path / "cutout.png")
    image = only_photo(tmp_path)
    assert px(image, (5, 5)) == WHITE
    assert px(image, (15, 5)) == (10, 20, 30)
    assert near(px(image, (25, 5)), (127, 127, 127), tol=2)


def test_palette_png_with_and_without_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (20, 10), 0)
    pal.putpalette([10, 20, 30, 200, 150, 100] + [0] * 762)
    pal.paste(1, (10, 0, 20, 10))
    pal.save(tmp_path / "a_plain.png")
    pal.save(tmp_path / "b_transparent.png", transparency=0)
    plain, transparent = (p.image for p in read_image_folder(tmp_path).photos)
    assert plain.mode == transparent.mode == "RGB"
    assert px(plain, (5, 5)) == (10, 20, 30) and px(plain, (15, 5)) == (200, 150, 100)
    assert px(transparent, (5, 5)) == WHITE and px(transparent, (15, 5)) == (200, 150, 100)


def test_grayscale_and_bilevel(tmp_path: Path) -> None:
    Image.new("L", (8, 8), 77).save(tmp_path / "a_gray.png")
    bilevel = Image.new("1", (8, 8), 0)
    bilevel.paste(1, (4, 0, 8, 8))
    bilevel.save(tmp_path / "b_bilevel.png")
    gray, bw = (p.image for p in read_image_folder(tmp_path).photos)
    assert px(gray, (3, 3)) == (77, 77, 77)
    assert px(bw, (1, 1)) == (0, 0, 0) and px(bw, (6, 1)) == WHITE


def test_cmyk_jpeg(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # pure red ink-wise
    cmyk.paste((255, 255, 0, 0), (16, 0, 32, 16))  # cyan + magenta -> blue
    cmyk.save(tmp_path / "print.jpg", quality=95)
    assert Image.open(tmp_path / "print.jpg").mode == "CMYK"
    image = only_photo(tmp_path)
    assert near(px(image, (4, 8)), RED) and near(px(image, (28, 8)), BLUE)


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 32896, 65535, 1000]], dtype=np.uint16).repeat(4, axis=0)
    Image.fromarray(values).save(tmp_path / "depth16.png")
    assert Image.open(tmp_path / "depth16.png").mode == "I;16"
    image = only_photo(tmp_path)
    assert [px(image, (x, 0)) for x in range(4)] == [(0, 0, 0), (128,) * 3, (255,) * 3, (4,) * 3]


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.fromarray(np.array([[0, 32896, 65535]], dtype=">u2")), [0, 128, 255]),  # I;16B
        (Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32)), [0, 128, 255]),  # I, 16-bit data
        (Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32)), [0, 100, 255]),  # I, 8-bit data
        (Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)), [0, 128, 255]),  # F in 0..1
        (Image.fromarray(np.array([[-5.0, 100.0, 255.0]], dtype=np.float32)), [0, 100, 255]),  # F, 0..255
        (Image.fromarray(np.array([[-5.0, 32896.0, 65535.0]], dtype=np.float32)), [0, 128, 255]),  # F, 16-bit
        (Image.fromarray(np.array([[0, 40000, 100000]], dtype=np.int32)), [0, 102, 255]),  # I, beyond 16-bit
    ],
)
def test_high_depth_modes(image: Image.Image, expected: list[int]) -> None:
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    assert [px(rgb, (x, 0)) for x in range(3)] == [(v, v, v) for v in expected]


def test_ycbcr_converted(tmp_path: Path) -> None:
    ycc = Image.new("RGB", (4, 4), (30, 160, 90)).convert("YCbCr")
    assert ycc.mode == "YCbCr"
    assert near(px(to_rgb(ycc), (0, 0)), (30, 160, 90), tol=3)


# --- read_image_folder: skipping, ordering and errors -----------------------------------------


def test_bad_files_skipped_with_reasons(tmp_path: Path) -> None:
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tmp_path / "b_good.png")
    (tmp_path / "a_notes.md").write_text("not a picture")
    noise = Image.effect_noise((200, 200), 60).convert("RGB")
    noise.save(tmp_path / "c_cut.jpg")
    data = (tmp_path / "c_cut.jpg").read_bytes()
    (tmp_path / "c_cut.jpg").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (8, 40)).save(tmp_path / "d_tiny.png")

    intake = read_image_folder(tmp_path, min_size=16)
    assert [p.path.name for p in intake.photos] == ["b_good.png"]
    reasons = {path.name: reason for path, reason in intake.skipped}
    assert list(reasons) == ["a_notes.md", "c_cut.jpg", "d_tiny.png"]
    assert reasons["a_notes.md"] == "not an image"
    assert "truncated" in reasons["c_cut.jpg"]
    assert "too small" in reasons["d_tiny.png"] and "8x40" in reasons["d_tiny.png"]

    summary = intake.summary()
    assert summary.startswith(f"1 instance image from {tmp_path}; skipped 3: a_notes.md (not an image), c_cut.jpg (")
    assert "\n" not in summary


def test_sorted_hidden_ignored_not_recursive(tmp_path: Path) -> None:
    for name in ["b.png", "a.png", "C.png"]:
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    Image.new("RGB", (4, 4)).save(tmp_path / ".hidden.png")
    (tmp_path / ".DS_Store").write_bytes(b"\0\1junk")
    (tmp_path / "nested").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "nested" / "deep.png")
    intake = read_image_folder(tmp_path, role="class")
    assert [p.path.name for p in intake.photos] == ["C.png", "a.png", "b.png"]
    assert intake.skipped == []
    assert intake.summary() == f"3 class images from {tmp_path}."
    assert Intake([], []).summary() == "0 instance images."


def test_only_bad_files_raises_naming_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my photos"
    folder.mkdir()
    (folder / "readme.md").write_text("hello")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (folder / "sub").mkdir()
    with pytest.raises(DreamboothError) as info:
        read_image_folder(folder, role="class")
    message = str(info.value)
    assert str(folder) in message and "class images" in message
    assert "readme.md (not an image)" in message and "broken.jpg (" in message
    assert "JPEG" in message and "PNG" in message
    assert "Subfolders are not searched (sub)" in message


def test_empty_folder_raises_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(DreamboothError, match="empty"):
        read_image_folder(tmp_path)
    (tmp_path / "notes.md").write_text("x")
    intake = read_image_folder(tmp_path, role="class", allow_empty=True)
    assert intake.photos == [] and intake.skipped == [(tmp_path / "notes.md", "not an image")]


def test_missing_folder_and_file_instead_of_folder(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(DreamboothError) as info:
        read_image_folder(missing)
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)

    a_file = tmp_path / "photo.jpg"
    Image.new("RGB", (4, 4)).save(a_file)
    with pytest.raises(DreamboothError) as info:
        read_image_folder(a_file)
    assert str(a_file) in str(info.value) and "not a folder" in str(info.value)


# --- check_output_dir -------------------------------------------------------------------------


def test_output_equal_to_input_refused(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    with pytest.raises(DreamboothError) as info:
        check_output_dir(photos, [photos])
    message = str(info.value)
    assert message.count(str(photos)) >= 2 and "same folder" in message
    assert str(tmp_path / "photos-output") in message


def test_output_inside_any_input_refused(tmp_path: Path) -> None:
    instance, klass = tmp_path / "dog", tmp_path / "class"
    instance.mkdir(), klass.mkdir()
    out = klass / "run1" / "out"  # need not exist yet
    with pytest.raises(DreamboothError) as info:
        check_output_dir(out, [instance, klass])
    assert str(out) in str(info.value) and str(klass) in str(info.value) and "inside" in str(info.value)


def test_sibling_and_prefix_named_outputs_allowed(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    check_output_dir(tmp_path / "output", [photos])
    check_output_dir(tmp_path / "photos-output", [photos])  # shares a string prefix, not a parent
    check_output_dir(tmp_path, [photos])  # the parent of an input is fine


def test_output_via_symlink_refused(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    link = tmp_path / "link"
    link.symlink_to(photos, target_is_directory=True)
    with pytest.raises(DreamboothError) as info:
        check_output_dir(link, [photos])
    assert str(link) in str(info.value) and str(photos.resolve()) in str(info.value)
    with pytest.raises(DreamboothError):
        check_output_dir(link / "out", [photos])
    with pytest.raises(DreamboothError):  # the input given through the link
        check_output_dir(photos / "out", [link])


# --- fit_square -------------------------------------------------------------------------------


def test_fit_square_center_keeps_middle(tmp_path: Path) -> None:
    wide = bands((300, 100), [RED, GREEN, BLUE])
    out = fit_square(wide, 64)
    assert out.size == (64, 64) and out.mode == "RGB"
    for xy in [(1, 1), (62, 62), (32, 32), (1, 62)]:
        assert near(px(out, xy), GREEN, tol=4)

    tall = bands((90, 270), [RED, GREEN, BLUE], vertical=True)
    out = fit_square(tall, 48)
    assert out.size == (48, 48)
    assert near(px(out, (24, 1)), GREEN, tol=4) and near(px(out, (24, 46)), GREEN, tol=4)


def test_fit_square_random_varies_and_is_seeded() -> None:
    wide = bands((400, 100), [RED, GREEN, GREEN, BLUE])
    crops = [fit_square(wide, 50, crop="random", rng=random.Random(seed)) for seed in range(40)]
    assert all(c.size == (50, 50) for c in crops)
    left_edges = {max(range(3), key=lambda i: px(c, (0, 25))[i]) for c in crops}
    right_edges = {max(range(3), key=lambda i: px(c, (49, 25))[i]) for c in crops}
    assert left_edges >= {0, 1} and right_edges >= {1, 2}  # both ends get sampled
    again = fit_square(wide, 50, crop="random", rng=random.Random(7))
    assert np.array_equal(np.asarray(again), np.asarray(crops[7]))


class _EdgeRandom(random.Random):
    """Always picks the largest allowed offset: the crop flush with the far edge."""

    def randint(self, a: int, b: int) -> int:
        return b


@pytest.mark.parametrize("size", [(301, 100), (100, 301), (777, 512), (64, 1000)])
def test_fit_square_random_far_edge_stays_inside(size: tuple[int, int]) -> None:
    vertical = size[1] > size[0]
    image = bands(size, [RED, BLUE], vertical=vertical)
    out = fit_square(image, 64, crop="random", rng=_EdgeRandom())
    assert out.size == (64, 64)
    assert near(px(out, (63, 63)), BLUE, tol=4)  # far end of the long side is in the crop


def test_fit_square_upscales_small_and_flattens_alpha() -> None:
    small = Image.new("RGBA", (20, 10), (0, 0, 0, 0))
    out = fit_square(small, 64)
    assert out.size == (64, 64) and out.mode == "RGB" and px(out, (32, 32)) == WHITE


def test_fit_square_square_input_exact_size_unchanged() -> None:
    image = Image.effect_noise((32, 32), 80).convert("RGB")
    assert np.array_equal(np.asarray(fit_square(image, 32)), np.asarray(image))


def test_fit_square_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        fit_square(Image.new("RGB", (8, 8)), 8, crop="top")
    with pytest.raises(ValueError):
        fit_square(Image.new("RGB", (8, 8)), 0)


# --- tensors ----------------------------------------------------------------------------------


def test_to_tensor_range_and_layout() -> None:
    image = Image.new("RGB", (5, 3), (0, 255, 0))
    image.putpixel((4, 2), (255, 0, 0))
    t = to_tensor(image)
    assert t.shape == (3, 3, 5) and t.dtype == torch.float32
    assert t[:, 0, 0].tolist() == [-1.0, 1.0, -1.0]
    assert t[:, 2, 4].tolist() == [1.0, -1.0, -1.0]


def test_round_trip_is_exact_and_clamps() -> None:
    image = Image.effect_noise((33, 17), 90).convert("RGB")
    back = to_pil(to_tensor(image))
    assert back.size == (33, 17) and back.mode == "RGB"
    assert np.array_equal(np.asarray(back), np.asarray(image))

    wild = torch.tensor([[[2.0, -3.0, 0.0]]]).repeat(3, 1, 1)
    assert [px(to_pil(wild), (x, 0)) for x in range(3)] == [WHITE, (0, 0, 0), (128, 128, 128)]
    with pytest.raises(ValueError):
        to_pil(torch.zeros(1, 3, 4, 4))


# --- real photos ------------------------------------------------------------------------------


@pytest.mark.skipif(not (DREAMBENCH / "dog").is_dir(), reason="shared/dreambench not present")
def test_dreambench_dog_photos() -> None:
    folder = DREAMBENCH / "dog"
    intake = read_image_folder(folder)
    assert [p.path.name for p in intake.photos] == ["00.jpg", "01.jpg", "02.jpg", "03.jpg", "04.jpg"]
    assert intake.skipped == []
    assert intake.summary() == f"5 instance images from {folder}."
    for photo in intake.photos:
        with Image.open(photo.path) as raw:
            expected = ImageOps.exif_transpose(raw).convert("RGB")
        assert photo.image.mode == "RGB" and photo.image.size == expected.size
        assert np.array_equal(np.asarray(photo.image), np.asarray(expected))
        square = fit_square(photo.image, 256)
        assert square.size == (256, 256)
        assert to_tensor(square).abs().max() <= 1.0


# --- odd but usable photos get a note, not silence ----------------------------------------


def test_duplicates_ignored_subfolders_and_huge_images_are_noted(tmp_path: Path, monkeypatch) -> None:
    bands((40, 30), [RED, GREEN]).save(tmp_path / "a.png")
    bands((40, 30), [RED, GREEN]).save(tmp_path / "b.png")          # the same picture again
    bands((30, 30), [BLUE, WHITE]).save(tmp_path / "c.png")
    (tmp_path / "more").mkdir()
    bands((30, 30), [BLUE, RED]).save(tmp_path / "more" / "d.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)            # c.png (900 px) is fine, a/b (1200) are "huge"
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # Pillow's raw DecompressionBombWarning must not reach the user
        intake = read_image_folder(tmp_path)
    assert [p.path.name for p in intake.photos] == ["a.png", "b.png", "c.png"]   # used as given
    notes = "\n".join(intake.notes)
    assert "b.png is the same picture as a.png, so it counts twice" in notes
    assert "subfolder more of" in notes and "not read" in notes
    assert "a.png is 40x30 (0 megapixels): decoding it takes a lot of memory" in notes


def test_tiny_and_extreme_aspect_photos_are_noted_for_the_training_size(tmp_path: Path) -> None:
    from dreambooth.data.intake import photo_notes
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    Image.new("RGB", (20, 4000)).save(tmp_path / "strip.png")
    Image.new("RGB", (600, 500)).save(tmp_path / "fine.png")
    notes = photo_notes(read_image_folder(tmp_path).photos, 512)
    assert len(notes) == 3
    assert notes[0].startswith("dot.png is 1x1, smaller than the 512 px training size: it is upscaled 512.0x")
    assert notes[1].startswith("strip.png is 20x4000, smaller than")
    assert notes[2] == ("strip.png is 20x4000: each training view is a square crop of it, so it shows at most "
                        "1/200 of the picture; crop it around the subject yourself.")
