"""GrabCut on a superpixel region graph: the CPU default segmenter, no weights.

Plain `cv2.grabCut` builds and cuts a pixel graph for every prompt (about 0.6 s per iteration on a
640x480 image) and caches nothing. Here GrabCut's model (two colour GMMs, a contrast-sensitive
smoothness term, iterated re-estimation; Rother et al. 2004) is solved on a region graph computed
once per image, as in Lazy Snapping (Li et al. 2004):

- `_encode` (once per image or view, ~0.2 s at 640x480, dominated by SLIC): SLIC superpixels
  (OpenCV SLICO, ~3000 regions) at a capped working resolution; per region its pixel count, mean
  colour and histogram over quantised colours; the region adjacency graph with contrast-sensitive
  weights (GrabCut's beta over neighbouring region colour differences, times the length of the
  shared boundary); GrabCut's pixel neighbour weights for the boundary refinement.
- `_predict` (per prompt, ~10-30 ms): a label map over regions from the prompt, then GrabCut
  iterations: fit both colour GMMs (hard EM, weighted by pixel counts) on the current labelling;
  unary = the sum of the region's pixels' -log likelihoods (exact through the colour histograms);
  pairwise = gamma x the cached edge weights; min cut. Then a pixel-level GrabCut cut in a thin band
  along the region boundary with the final GMMs, and the labels are painted at full resolution.

Prompts. A box: regions mostly outside it are definite background, inside probable foreground; if
the iterations drain the box (GrabCut's collapse on small or camouflaged objects), the last labelling
that kept something is returned. Clicks: the regions under them are hard seeds (infinite t-links).
A previous candidate (`MaskPrompt.mask`) is the starting label map (probable foreground inside,
probable background outside); with clicks it is an edit, as in GrabCut's user editing: one cut with
models fit on the candidate, changes limited to the neighbourhood of the clicks, each click's label
spread like a magic wand over connected regions of similar colour. Outside a working rectangle (the
box, or the extent of box, candidate and foreground clicks plus a margin) regions are definite
background, so foreground clicks outside a box can still add foreground.

Max-flow: PyMaxflow (Boykov-Kolmogorov) when installed, else scipy's `maximum_flow` (integer
capacities; the source side of the cut is found by BFS on the residual graph). Same cuts; scipy is
slower on the pixel band (about 2-3x on the whole predict).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import breadth_first_order, connected_components, maximum_flow

from rsagent.segmenters.base import MaskPrompt, Prediction, Segmenter

try:  # PyMaxflow (Boykov-Kolmogorov) is much faster on pixel grids; scipy's max-flow is the fallback
    import maxflow as _maxflow
except ImportError:  # pragma: no cover - depends on the environment
    _maxflow = None

# Trimap codes, as in OpenCV's GrabCut.
BGD, FGD, PR_BGD, PR_FGD = 0, 1, 2, 3

_LOG_2PI = math.log(2.0 * math.pi)
_COLOUR_BITS = 5  # colour quantisation per RGB channel for the colour models (32^3 bins at most)
_MIN_FRACTION = 0.02  # a cut keeping less than this of the box / previous mask is rejected (collapse)
_RECT_MARGIN = 0.1  # margin of the working rectangle around a mask prompt / clicks, x its long side
_CLICK_EXTENT = 0.2  # clicks only: working rectangle margin, x the image diagonal
# Refinement of a previous candidate (mask prompt + clicks):
_LOCAL = 0.2  # regions farther than this x the working rectangle's long side from every click stay
_KEEP = 3.0  # cost (nats per pixel) of leaving the starting label near the clicks
_KEEP_SPREAD = 10.0  # ... in the regions a click's label was spread to
_SPREAD = 1.1  # a click's magic wand: colour tolerance, x the median colour step between adjacent regions
_PIXEL_GAMMA = 50.0  # GrabCut's smoothness weight, for the pixel-level boundary refinement
# Pixel neighbour offsets (dy, dx) and their GrabCut distance weights, for the boundary refinement.
_OFFSETS = ((0, 1, 1.0), (1, 0, 1.0), (1, 1, 1.0 / math.sqrt(2.0)), (1, -1, 1.0 / math.sqrt(2.0)))


@dataclass
class _Encoded:
    """Prompt-independent state of one image (all at the working resolution)."""

    labels: np.ndarray  # (h, w) int32 region of each pixel
    scale: tuple[float, float]  # working pixels per image pixel along x and y (<= 1)
    count: np.ndarray  # (n,) float64 pixels per region
    centroid: np.ndarray  # (n, 2) float64 (x, y)
    mean: np.ndarray  # (n, 3) float64 mean Lab colour
    colour_step: float  # median colour distance between adjacent regions (Lab units)
    bins: np.ndarray  # (h, w) uint16 quantised colour bin of each pixel
    bin_colour: np.ndarray  # (b, 3) float64 mean Lab colour of each bin
    hist: sparse.csr_matrix  # (n, b) pixels of each colour bin in each region
    hist_t: sparse.csr_matrix  # (b, n) its transpose
    edges: np.ndarray  # (m, 2) int64 adjacent region pairs (lo < hi)
    edge_weight: np.ndarray  # (m,) float64 shared boundary length x exp(-beta * colour distance^2)
    pixel_weight: np.ndarray  # (4, h, w) float16 exp(-beta * d^2) / distance to the neighbour at _OFFSETS

    @property
    def n_regions(self) -> int:
        return len(self.count)


class GrabCutSegmenter(Segmenter):
    """GrabCut's energy on SLIC superpixels: encode once per image, each prompt is a small graph cut.

    Args:
        n_regions: target number of superpixels (sets the SLIC region size) unless `region_size` is given.
        region_size: SLIC region size in working pixels (overrides `n_regions`).
        iterations: GrabCut iterations (GMM re-fit + cut) per prompt, at most.
        gamma: smoothness weight per unit of shared region boundary.
        components: Gaussians per colour model.
        boundary_band: half-width in working pixels of the band along the region boundary that is
            re-cut at pixel level with the final colour models (0: no refinement).
        max_side: long side of the working resolution; larger images are downscaled for encoding and
            the mask is upsampled back.
        click_radius: pixels (working resolution) around a click whose regions become hard seeds.
        cache_size: encoded images kept (LRU).
    """

    name = "grabcut"

    def __init__(self, n_regions: int = 3000, region_size: int | None = None, iterations: int = 5,
                 gamma: float = 35.0, components: int = 5, boundary_band: int = 6, max_side: int = 1024,
                 click_radius: int = 3, cache_size: int = 8) -> None:
        super().__init__(cache_size=cache_size)
        if iterations < 1 or components < 1 or n_regions < 2 or max_side < 16:
            raise ValueError("need iterations >= 1, components >= 1, n_regions >= 2, max_side >= 16")
        if region_size is not None and region_size < 2:
            raise ValueError("region_size must be >= 2")
        if gamma < 0 or boundary_band < 0 or click_radius < 0:
            raise ValueError("gamma, boundary_band and click_radius must be >= 0")
        self.n_regions = n_regions
        self.region_size = region_size
        self.iterations = iterations
        self.gamma = float(gamma)
        self.components = components
        self.boundary_band = boundary_band
        self.max_side = max_side
        self.click_radius = click_radius

    @property
    def identifier(self) -> str:
        size = f"region_size={self.region_size}" if self.region_size else f"n_regions={self.n_regions}"
        return (f"grabcut-superpixel(slico {size}, max_side={self.max_side}, iterations={self.iterations}, "
                f"gamma={self.gamma:g}, components={self.components}, boundary_band={self.boundary_band})")

    # --- encoding ------------------------------------------------------------------------------
    def _encode(self, image: np.ndarray) -> _Encoded:
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        work = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            work = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        h, w = work.shape[:2]
        lab = cv2.cvtColor(work.astype(np.float32) * (1.0 / 255.0), cv2.COLOR_RGB2Lab)  # L in 0..100

        labels = self._superpixels(work, h, w)
        n = int(labels.max()) + 1
        flat = labels.ravel()
        count = np.bincount(flat, minlength=n).astype(np.float64)
        colours = lab.reshape(-1, 3).astype(np.float64)
        mean = np.stack([np.bincount(flat, colours[:, c], n) for c in range(3)], axis=1) / count[:, None]
        ys, xs = np.divmod(np.arange(h * w, dtype=np.float64), w)
        centroid = np.stack([np.bincount(flat, xs, n), np.bincount(flat, ys, n)], axis=1) / count[:, None]

        # Colour histograms: the GMMs are fit on, and evaluated at, the quantised colours, so a
        # region's unary is exactly the sum of its pixels' unaries (up to quantisation).
        q = (work >> (8 - _COLOUR_BITS)).astype(np.int64).reshape(-1, 3)
        code = (q[:, 0] << (2 * _COLOUR_BITS)) | (q[:, 1] << _COLOUR_BITS) | q[:, 2]
        _, bins = np.unique(code, return_inverse=True)
        bins = bins.reshape(-1)
        nb = int(bins.max()) + 1
        bin_count = np.bincount(bins, minlength=nb).astype(np.float64)
        bin_colour = np.stack([np.bincount(bins, colours[:, c], nb) for c in range(3)], axis=1) / bin_count[:, None]
        hist = sparse.csr_matrix((np.ones(flat.size), (flat, bins)), shape=(n, nb))
        hist.sum_duplicates()

        # Region adjacency from 4-connected pixel pairs; boundary length = number of crossing pairs.
        a_parts, b_parts = [], []
        for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
            a, b = a.ravel(), b.ravel()
            diff = a != b
            a_parts.append(a[diff])
            b_parts.append(b[diff])
        a = np.concatenate(a_parts).astype(np.int64)
        b = np.concatenate(b_parts).astype(np.int64)
        key, length = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_counts=True)
        edges = np.stack([key // n, key % n], axis=1)
        edge_weight = np.zeros(len(edges))
        dist2 = np.sum((mean[edges[:, 0]] - mean[edges[:, 1]]) ** 2, axis=1)
        colour_step = float(np.median(np.sqrt(dist2))) if len(edges) else 0.0
        if len(edges):
            mean_dist2 = float(np.average(dist2, weights=length))
            beta = 0.5 / mean_dist2 if mean_dist2 > 0 else 0.0
            edge_weight = length * np.exp(-beta * dist2)

        return _Encoded(labels=labels, scale=(w / width, h / height), count=count, centroid=centroid, mean=mean,
                        colour_step=colour_step, bins=bins.reshape(h, w).astype(np.uint16), bin_colour=bin_colour,
                        hist=hist, hist_t=hist.T.tocsr(), edges=edges, edge_weight=edge_weight,
                        pixel_weight=_pixel_weights(lab) if self.boundary_band else np.zeros((4, 0, 0), np.float16))

    def _superpixels(self, work: np.ndarray, h: int, w: int) -> np.ndarray:
        region_size = self.region_size or max(2, round(math.sqrt(h * w / self.n_regions)))
        if min(h, w) < 2 * region_size:
            # Too small for SLIC: a regular grid of small cells.
            cell = max(1, min(h, w) // 4)
            gy, gx = np.arange(h) // cell, np.arange(w) // cell
            return (gy[:, None] * (gx[-1] + 1) + gx[None, :]).astype(np.int32)
        lab8 = cv2.cvtColor(cv2.GaussianBlur(work, (3, 3), 0), cv2.COLOR_RGB2Lab)
        slic = cv2.ximgproc.createSuperpixelSLIC(lab8, algorithm=cv2.ximgproc.SLICO, region_size=region_size)
        slic.iterate(10)
        slic.enforceLabelConnectivity(25)
        _, inverse = np.unique(slic.getLabels(), return_inverse=True)  # contiguous region ids
        return inverse.reshape(h, w).astype(np.int32)

    # --- prediction ----------------------------------------------------------------------------
    def _predict(self, state: _Encoded, shape: tuple[int, int], box, points, labels,
                 mask_prompt: MaskPrompt | None, multimask: bool) -> Prediction:
        height, width = shape
        h, w = state.labels.shape
        n = state.n_regions
        clicks = self._clicks(state, shape, points, labels)
        box_px = self._box(state, shape, box)
        prior = None  # the previous candidate at working resolution, as a float map
        if mask_prompt is not None:
            if np.shape(mask_prompt.mask) != (height, width):
                raise ValueError(f"mask prompt shape {np.shape(mask_prompt.mask)} != image shape {(height, width)}")
            prior = np.asarray(mask_prompt.mask, bool).astype(np.float32)
            if prior.shape != (h, w):
                prior = cv2.resize(prior, (w, h), interpolation=cv2.INTER_AREA)
            if not (prior >= 0.5).any():
                prior = None  # an empty candidate says nothing: prompt as if there were none
        if box_px is None and prior is None and (clicks is None or not (clicks[2] == 1).any()):
            # Nothing marks any foreground (e.g. only negative clicks): the empty mask.
            return Prediction(masks=np.zeros((1, height, width), bool), scores=np.zeros(1, np.float32))

        # Working rectangle: outside it regions are definite background, as GrabCut's rectangle.
        # It is the box when the box is the whole story, else the extent of the box, the previous
        # mask and the foreground clicks, with a margin (so foreground clicks outside a box can add).
        extents = [] if box_px is None else [box_px]
        if prior is not None:
            ys, xs = np.nonzero(prior >= 0.5)
            extents.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
        pos = None
        if clicks is not None and (clicks[2] == 1).any():
            pos = np.stack([clicks[0][clicks[2] == 1], clicks[1][clicks[2] == 1]], axis=1)
            extents.append((int(pos[:, 0].min()), int(pos[:, 1].min()),
                            int(pos[:, 0].max()) + 1, int(pos[:, 1].max()) + 1))
        rect = (min(e[0] for e in extents), min(e[1] for e in extents),
                max(e[2] for e in extents), max(e[3] for e in extents))
        if rect != box_px:
            if box_px is None and prior is None:  # clicks only: the object's size is unknown
                margin = _CLICK_EXTENT * math.hypot(h, w)
            else:
                margin = _RECT_MARGIN * max(rect[2] - rect[0], rect[3] - rect[1]) + 2
            rect = (max(0, int(rect[0] - margin)), max(0, int(rect[1] - margin)),
                    min(w, int(math.ceil(rect[2] + margin))), min(h, int(math.ceil(rect[3] + margin))))
        trimap = np.full(n, PR_BGD, np.int8)
        trimap[_fraction_in(state, rect) < 0.5] = BGD

        # The starting label map: the previous candidate, else the box, else around the clicks.
        start = None
        keep = None
        iterations = self.iterations
        min_fg = 0.0
        if prior is not None:
            prior_frac = np.bincount(state.labels.ravel(), prior.ravel().astype(np.float64), n) / state.count
            start = prior_frac >= 0.5
            if not start.any():  # a candidate smaller than any region: take what it touches most
                start = prior_frac >= prior_frac.max()
            min_fg = _MIN_FRACTION * float(state.count[start].sum())
            weight = np.full(n, _KEEP)
            near = np.ones(n, bool)
            if clicks is not None:
                # An edit (GrabCut's user editing: new seeds, then one cut with the models of the
                # current labelling). Corrections are local: far from every click the labels stay;
                # near them, each click's label spreads (a magic wand over similar colours), and
                # leaving the starting label costs _KEEP per pixel (_KEEP_SPREAD where spread).
                radius = _LOCAL * max(rect[2] - rect[0], rect[3] - rect[1])
                cxy = np.stack([clicks[0], clicks[1]], axis=1).astype(np.float64)
                near = ((state.centroid[:, None, :] - cxy[None]) ** 2).sum(-1).min(axis=1) <= radius * radius
                weight[self._spread_clicks(state, start, clicks, near)] = _KEEP_SPREAD
                iterations = 1
            trimap[start] = PR_FGD
            trimap[~near & start] = FGD
            trimap[~near & ~start] = BGD
            keep = weight * np.stack([start, ~start]).astype(np.float64)
        elif box_px is not None:
            box_frac = _fraction_in(state, box_px)
            if not (box_frac >= 0.5).any():  # a box smaller than any region: take what it touches
                box_frac = (box_frac > 0).astype(np.float64)
            trimap[box_frac >= 0.5] = PR_FGD
            # A box says there is an object in it: if iterating drains (almost) all of it, as
            # GrabCut does on small or camouflaged objects, keep the last labelling that had one.
            min_fg = _MIN_FRACTION * (box_px[2] - box_px[0]) * (box_px[3] - box_px[1])
        else:
            radius = 0.5 * _CLICK_EXTENT * math.hypot(h, w)
            d2 = ((state.centroid[:, None, :] - pos[None, :, :].astype(np.float64)) ** 2).sum(-1).min(axis=1)
            trimap[(d2 <= radius * radius) & (trimap != BGD)] = PR_FGD
        if clicks is not None:
            self._apply_clicks(state, trimap, clicks)

        seg, posterior, ll = self._grabcut(state, trimap, min_fg, keep, iterations)
        if box_px is None and prior is None and seg.any():
            seg = self._keep_seeded(state, seg, trimap)
        if not seg.any():
            return Prediction(masks=np.zeros((1, height, width), bool), scores=np.zeros(1, np.float32))
        score = float(np.average(posterior[seg], weights=state.count[seg]))

        # Paint regions to pixels (a previous candidate is repainted at region level too: measured
        # better over click sequences than keeping its pixels), then the optional pixel-level cut
        # along the boundary, where labels are not fixed.
        hard = (trimap == FGD) | (trimap == BGD)
        work = seg[state.labels]
        fixed = hard[state.labels]
        if self.boundary_band and ll is not None:
            work = self._refine_band(state, work, fixed, ll)
        mask = work
        if work.shape != (height, width):
            up = cv2.resize(work.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
            mask = up >= 0.5
        return Prediction(masks=mask[None], scores=np.array([score], np.float32))

    @staticmethod
    def _clicks(state: _Encoded, shape: tuple[int, int], points, labels):
        """Validated clicks as (x, y, label) arrays in working pixels, or None."""
        if points is None or len(points) == 0:
            return None
        height, width = shape
        if not np.all(np.isfinite(points)):
            raise ValueError("points must be finite")
        if not np.all((labels == 0) | (labels == 1)):
            raise ValueError(f"labels must be 0 (background) or 1 (foreground), got {labels.tolist()}")
        inside = (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
        if not inside.all():
            raise ValueError(f"points outside the {width}x{height} image: {points[~inside].tolist()}")
        h, w = state.labels.shape
        sx, sy = state.scale
        px = np.clip(np.floor((np.floor(points[:, 0]) + 0.5) * sx), 0, w - 1).astype(np.int64)
        py = np.clip(np.floor((np.floor(points[:, 1]) + 0.5) * sy), 0, h - 1).astype(np.int64)
        return px, py, labels.astype(np.int64)

    @staticmethod
    def _box(state: _Encoded, shape: tuple[int, int], box):
        """A validated box in working pixels (x0, y0, x1, y1), clipped to the image, or None."""
        if box is None:
            return None
        height, width = shape
        vals = np.asarray(box, np.float64).reshape(-1)
        if vals.size != 4 or not np.all(np.isfinite(vals)) or vals[2] <= vals[0] or vals[3] <= vals[1]:
            raise ValueError(f"box must be (x0, y0, x1, y1) with x0 < x1 and y0 < y1, got {box}")
        h, w = state.labels.shape
        sx, sy = state.scale
        x0, y0 = min(max(math.floor(vals[0] * sx), 0), w), min(max(math.floor(vals[1] * sy), 0), h)
        x1, y1 = min(max(math.ceil(vals[2] * sx), 0), w), min(max(math.ceil(vals[3] * sy), 0), h)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box {tuple(vals.tolist())} lies outside the {width}x{height} image")
        return (x0, y0, x1, y1)

    def _spread_clicks(self, state: _Encoded, start: np.ndarray, clicks, near: np.ndarray) -> np.ndarray:
        """A magic wand: each click gives its label to the regions connected to its own region
        through regions of similar colour (within _SPREAD x the median colour step between adjacent
        regions), inside the local zone `near`; later clicks win. Returns the regions reached."""
        n = state.n_regions
        delta = _SPREAD * state.colour_step
        e = state.edges
        hit = np.zeros(n, bool)
        for x, y, lab in zip(*clicks):
            seed = state.labels[y, x]
            close = near & (np.linalg.norm(state.mean - state.mean[seed], axis=1) <= delta)
            close[seed] = True
            sub = e[close[e[:, 0]] & close[e[:, 1]]]
            adj = sparse.csr_matrix((np.ones(len(sub), np.int8), (sub[:, 0], sub[:, 1])), shape=(n, n))
            _, comp = connected_components(adj, directed=False)
            reach = comp == comp[seed]
            start[reach] = lab == 1
            hit |= reach
        return hit

    def _apply_clicks(self, state: _Encoded, trimap: np.ndarray, clicks) -> None:
        """Regions under each click (and within click_radius) become hard seeds; later clicks win."""
        h, w = state.labels.shape
        r = self.click_radius
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        disc = (xx * xx + yy * yy) <= r * r
        for x, y, lab in zip(*clicks):
            ys, xs = y + yy[disc], x + xx[disc]
            ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
            regions = np.append(np.unique(state.labels[ys[ok], xs[ok]]), state.labels[y, x])
            trimap[regions] = FGD if lab == 1 else BGD

    def _grabcut(self, state: _Encoded, trimap: np.ndarray, min_fg: float = 0.0, keep: np.ndarray | None = None,
                 iterations: int | None = None):
        """GrabCut iterations over regions.

        Returns (foreground (n,) bool, foreground posterior per region (n,), (ll_fg, ll_bg) per colour
        bin from the colour models that produced the foreground, or None when there are none).
        A cut that leaves fewer than `min_fg` pixels of foreground is rejected: iterating stops there.
        """
        seg = (trimap == FGD) | (trimap == PR_FGD)
        if not seg.any() or seg.all():
            return seg, seg.astype(np.float64), None
        rng = np.random.default_rng(0)
        colour = state.bin_colour
        assign: list[np.ndarray | None] = [None, None]
        posterior, ll, seg_ll = np.zeros(state.n_regions), None, None
        for _ in range(iterations or self.iterations):
            if not seg.any() or seg.all():
                break
            lls = []
            for j, side in enumerate((seg, ~seg)):
                weight = state.hist_t @ side.astype(np.float64)  # pixels of each colour on this side
                used = weight > 0
                gmm = _fit_gmm(colour[used], weight[used], self.components, rng,
                               None if assign[j] is None else assign[j][used])
                comp = _component_loglik(gmm, colour)
                assign[j] = comp.argmax(axis=1)  # GrabCut's step 1 (component assignment) for next round
                top = comp.max(axis=1)
                lls.append(top + np.log(np.exp(comp - top[:, None]).sum(axis=1)))
            ll = (lls[0], lls[1])
            post_bin = 1.0 / (1.0 + np.exp(np.clip(ll[1] - ll[0], -50.0, 50.0)))
            post = (state.hist @ post_bin) / state.count
            if seg_ll is None:
                posterior = post  # the initial labelling's score, should the first cut be rejected
            cost_bg, cost_fg = state.hist @ -ll[1], state.hist @ -ll[0]
            if keep is not None:  # per pixel, the cost of leaving the previous label
                cost_bg = cost_bg + keep[0] * state.count
                cost_fg = cost_fg + keep[1] * state.count
            new = _min_cut(cost_bg, cost_fg, state.edges,
                           self.gamma * state.edge_weight, trimap == FGD, trimap == BGD)
            if float(state.count[new].sum()) < min_fg:
                break
            changed = not np.array_equal(new, seg)
            seg, posterior, seg_ll = new, post, ll
            if not changed:
                break
        return seg, posterior, seg_ll

    def _refine_band(self, state: _Encoded, work: np.ndarray, fixed: np.ndarray, ll) -> np.ndarray:
        """Pixel-level GrabCut cut in a band along the region boundary; outside it the labels stay."""
        h, w = work.shape
        m8 = work.astype(np.uint8)
        r = self.boundary_band
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        edge = cv2.morphologyEx(m8, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        band = (cv2.dilate(edge.astype(np.uint8), kernel) > 0) & ~fixed
        nodes = np.flatnonzero(band.ravel())
        if nodes.size == 0:
            return work
        index = np.full(h * w, -1, np.int64)
        index[nodes] = np.arange(nodes.size)
        bins = state.bins.ravel()[nodes]
        src = -ll[1][bins]  # cost of background
        snk = -ll[0][bins]  # cost of foreground
        flat = work.ravel()
        e0s, e1s, ws = [], [], []
        ys, xs = np.divmod(nodes, w)
        for k, (dy, dx, _) in enumerate(_OFFSETS):
            for sign in (1, -1):  # the neighbour in each direction, both ways
                ny, nx = ys + sign * dy, xs + sign * dx
                ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
                if sign == 1:
                    wt = state.pixel_weight[k, ys[ok], xs[ok]]
                else:
                    wt = state.pixel_weight[k, ny[ok], nx[ok]]
                wt = _PIXEL_GAMMA * wt.astype(np.float64)
                me = np.flatnonzero(ok)
                other = ny[ok] * w + nx[ok]
                inner = index[other] >= 0
                if sign == 1:  # each in-band pair once
                    e0s.append(me[inner])
                    e1s.append(index[other[inner]])
                    ws.append(wt[inner])
                # A fixed-label neighbour outside the band pulls towards its label.
                outer = ~inner
                fg_nb = flat[other[outer]]
                src += np.bincount(me[outer][fg_nb], wt[outer][fg_nb], nodes.size)
                snk += np.bincount(me[outer][~fg_nb], wt[outer][~fg_nb], nodes.size)
        edges = np.stack([np.concatenate(e0s), np.concatenate(e1s)], axis=1)
        none = np.zeros(nodes.size, bool)
        fg = _min_cut(src, snk, edges, np.concatenate(ws), none, none)
        out = flat.copy()
        out[nodes] = fg
        return out.reshape(h, w)

    def _keep_seeded(self, state: _Encoded, seg: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        """Clicks only: keep the foreground regions connected (in the region graph) to a positive seed."""
        seeds = seg & (trimap == FGD)
        if not seeds.any():
            return seg
        e = state.edges[seg[state.edges[:, 0]] & seg[state.edges[:, 1]]]
        n = state.n_regions
        adj = sparse.csr_matrix((np.ones(len(e), np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
        _, comp = connected_components(adj, directed=False)
        return seg & np.isin(comp, np.unique(comp[seeds]))


def _fraction_in(state: _Encoded, rect: tuple[int, int, int, int]) -> np.ndarray:
    """Fraction of each region's pixels inside rect (x0, y0, x1, y1), working pixels."""
    x0, y0, x1, y1 = rect
    inside = np.bincount(state.labels[y0:y1, x0:x1].ravel(), minlength=state.n_regions)
    return inside / state.count


# --- graph cut ---------------------------------------------------------------------------------
def _min_cut(cost_bg: np.ndarray, cost_fg: np.ndarray, edges: np.ndarray, pair: np.ndarray,
             hard_fg: np.ndarray, hard_bg: np.ndarray) -> np.ndarray:
    """Minimise sum of unaries + sum over cut edges of `pair`; returns the foreground (source side).

    cost_bg/cost_fg: each node's cost of being background/foreground; hard_fg/hard_bg: nodes with
    infinite-capacity terminal links. Capacities are scaled to int32 for scipy's max-flow; the
    source side of the min cut is what the source still reaches in the residual graph.
    """
    n = len(cost_bg)
    base = np.minimum(cost_fg, cost_bg)
    cap_src = np.where(hard_fg | hard_bg, 0.0, cost_bg - base)
    cap_snk = np.where(hard_fg | hard_bg, 0.0, cost_fg - base)
    finite = float(cap_src.sum() + cap_snk.sum() + 2.0 * pair.sum())
    if _maxflow is not None:
        big = 2.0 * finite + 1.0
        g = _maxflow.Graph[float](n, len(edges))
        ids = g.add_nodes(n)
        g.add_grid_tedges(ids, np.where(hard_fg, big, cap_src), np.where(hard_bg, big, cap_snk))
        if len(edges):
            g.add_edges(edges[:, 0].astype(np.int32), edges[:, 1].astype(np.int32), pair, pair)
        g.maxflow()
        return ~g.get_grid_segments(ids)
    unit = float(2 ** 28) / max(finite, 1e-12)
    src = np.round(cap_src * unit).astype(np.int64)
    snk = np.round(cap_snk * unit).astype(np.int64)
    src[hard_fg] = 2 ** 29
    snk[hard_bg] = 2 ** 29
    pair_cap = np.round(pair * unit).astype(np.int64)
    source, sink = n, n + 1
    nodes = np.arange(n)
    e0, e1 = edges[:, 0], edges[:, 1]
    zeros = np.zeros(n, np.int64)
    rows = np.concatenate([np.full(n, source), nodes, e0, e1, nodes, np.full(n, sink)])
    cols = np.concatenate([nodes, np.full(n, sink), e1, e0, np.full(n, source), nodes])
    caps = np.concatenate([src, snk, pair_cap, pair_cap, zeros, zeros]).astype(np.int32)
    graph = sparse.csr_matrix((caps, (rows, cols)), shape=(n + 2, n + 2))
    flow = maximum_flow(graph, source, sink).flow
    residual = (graph - flow).tocsr()
    residual.data = (residual.data > 0).astype(np.int8)
    residual.eliminate_zeros()
    reached = breadth_first_order(residual, source, directed=True, return_predecessors=False)
    fg = np.zeros(n + 2, bool)
    fg[reached] = True
    return fg[:n]


def _pixel_weights(lab: np.ndarray) -> np.ndarray:
    """GrabCut's pixel smoothness weights exp(-beta |z_m - z_n|^2) / dist for the 4 forward neighbours."""
    h, w = lab.shape[:2]
    diffs = []
    for dy, dx, _ in _OFFSETS:
        d = np.zeros((h, w), np.float32)
        ys0, ys1 = 0, h - dy
        xs0, xs1 = max(0, -dx), w - max(0, dx)
        a = lab[ys0:ys1, xs0:xs1]
        b = lab[ys0 + dy:ys1 + dy, xs0 + dx:xs1 + dx]
        d[ys0:ys1, xs0:xs1] = ((a - b) ** 2).sum(axis=2)
        valid = np.zeros((h, w), bool)
        valid[ys0:ys1, xs0:xs1] = True
        diffs.append((d, valid))
    total = sum(float(d[v].sum()) for d, v in diffs)
    npairs = sum(int(v.sum()) for _, v in diffs)
    beta = 0.5 / (total / npairs) if npairs and total > 0 else 0.0
    out = np.zeros((4, h, w), np.float16)
    for k, ((d, valid), (_, _, dist)) in enumerate(zip(diffs, _OFFSETS)):
        out[k] = np.where(valid, np.exp(-beta * d) * dist, 0.0)
    return out


# --- weighted GMMs on quantised colours ----------------------------------------------------------
@dataclass
class _GMM:
    mean: np.ndarray  # (k, 3)
    inv: np.ndarray  # (k, 3, 3) inverse covariances
    log_norm: np.ndarray  # (k,) log weight - 0.5 * (log det cov + 3 log 2 pi)


def _kmeans(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator, iters: int = 10) -> np.ndarray:
    """Weighted k-means with k-means++ seeding; returns the assignment (len(x),)."""
    sq = (x * x).sum(axis=1)
    centres = x[[rng.choice(len(x), p=w / w.sum())]]
    d2 = ((x - centres[0]) ** 2).sum(axis=1)
    for _ in range(1, k):
        q = w * d2
        if q.sum() <= 0:
            break
        c = x[rng.choice(len(x), p=q / q.sum())]
        centres = np.vstack([centres, c])
        d2 = np.minimum(d2, ((x - c) ** 2).sum(axis=1))
    assign = np.zeros(len(x), np.int64)
    for it in range(iters):
        dist = sq[:, None] - 2.0 * x @ centres.T + (centres * centres).sum(axis=1)[None]
        new = dist.argmin(axis=1)
        if it > 0 and np.array_equal(new, assign):
            break
        assign = new
        tot = np.bincount(assign, w, len(centres))
        sums = np.stack([np.bincount(assign, w * x[:, j], len(centres)) for j in range(3)], axis=1)
        keep = tot > 0
        centres = np.where(keep[:, None], sums / np.maximum(tot, 1e-12)[:, None], centres)
    return assign


def _fit_gmm(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator, assign: np.ndarray | None) -> _GMM:
    """GrabCut's step 2: Gaussians from a hard assignment of weighted colours (k-means if none yet)."""
    k = max(1, min(k, len(x)))
    if assign is None:
        assign = _kmeans(x, w, k, rng)
    _, assign = np.unique(assign, return_inverse=True)  # drop empty components
    k = int(assign.max()) + 1
    tot = np.bincount(assign, w, k)
    mu = np.stack([np.bincount(assign, w * x[:, j], k) for j in range(3)], axis=1) / tot[:, None]
    d = x - mu[assign]
    sig = np.empty((k, 3, 3))
    for a in range(3):
        for b in range(a, 3):
            sig[:, a, b] = sig[:, b, a] = np.bincount(assign, w * d[:, a] * d[:, b], k) / tot
    sig += np.eye(3)[None] * 0.01  # GrabCut's regulariser
    _, logdet = np.linalg.slogdet(sig)
    weight = tot / tot.sum()
    return _GMM(mean=mu, inv=np.linalg.inv(sig), log_norm=np.log(weight) - 0.5 * (logdet + 3 * _LOG_2PI))


def _component_loglik(gmm: _GMM, x: np.ndarray) -> np.ndarray:
    """log(weight_k N(x; mu_k, S_k)) for each row of x (n, k)."""
    d = x[None, :, :] - gmm.mean[:, None, :]  # (k, n, 3)
    maha = (np.matmul(d, gmm.inv) * d).sum(axis=2)
    return (gmm.log_norm[:, None] - 0.5 * maha).T
