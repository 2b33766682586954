"""PNG files a person can read: small images enlarged to a >= 512 px grid with a thin border,
scatter plots with axes and one scale shared by all panels."""

import numpy as np
from PIL import Image

from score_sde_jax import files


def test_small_images_are_enlarged_by_nearest_neighbour_with_a_grey_border(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8)
    path = files.save_image_grid(images, tmp_path / "grid.png")
    grid = np.asarray(Image.open(path))
    scale = 8  # ceil(512 / (8 columns x 8 px))
    assert grid.shape == (8 * (8 * scale + 2) + 2,) * 2 and grid.shape[0] >= 512
    cell = grid[2:2 + 8 * scale, 2:2 + 8 * scale]  # the first image, every pixel a 8x8 block
    np.testing.assert_array_equal(cell, np.kron(images[0, ..., 0], np.ones((scale, scale), np.uint8)))
    second = grid[2:2 + 8 * scale, 4 + 8 * scale:4 + 16 * scale]
    np.testing.assert_array_equal(second[::scale, ::scale], images[1, ..., 0])
    assert (grid[:2] == 128).all() and (grid[:, 2 + 8 * scale:4 + 8 * scale] == 128).all()
    # Images that are already large are not enlarged.
    big = files.image_grid(np.zeros((4, 300, 300, 3)), padding=1)
    assert big.shape == (603, 603, 3)
    rgb = np.asarray(Image.open(files.save_image_grid(np.zeros((4, 300, 300, 3)), tmp_path / "b.png")))
    assert rgb.shape == (606, 606, 3)  # padding 2


def _blue(img: np.ndarray) -> np.ndarray:
    return (img[..., 2] > 150) & (img[..., 0] < 100)


def test_scatter_panels_share_one_scale_and_have_axes_and_titles(tmp_path):
    point = np.array([[2.0, 1.0]])
    far = np.array([[2.0, 1.0], [40.0, 0.0]])  # outside the shared frame: counted, not drawn
    path = files.scatter_png({"VE: PC": point, "VP: ODE": far}, tmp_path / "s.png", size=200,
                             extent=4.0, title="mixture")
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    half = img.shape[1] // 2
    dots = [np.argwhere(_blue(img[:, :half])), np.argwhere(_blue(img[:, half:]))]
    assert len(dots[0]) == len(dots[1]) == 4  # one 2x2 dot each
    # The same place in both panels: the second dot is one panel width (40 + 200 + 12) right.
    np.testing.assert_array_equal(dots[1].min(0) + (0, half) - dots[0].min(0), (0, 252))
    dark = (img.sum(-1) < 300)
    assert dark[:20].any()  # the overall title
    assert (img[..., 0] > 150)[:, half:].any() and (img[..., 1] < 50)[:, half:].any()  # red note
    # Tick labels left of and below the frame: ink outside the square panels.
    assert dark[:, :40].any() and dark[-18:].any()


def test_save_scatter_frames_the_points(tmp_path):
    points = np.random.default_rng(1).normal(size=(300, 2)) * 3
    path = files.save_scatter(points, tmp_path / "one.png", "pc samples, step 10")
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert _blue(img).sum() >= 4 * 250  # nearly every point drawn (2x2 dots may overlap)
    assert img.shape[0] >= 400 and img.shape[1] >= 400
