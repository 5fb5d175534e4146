"""GrabCut on a superpixel region graph: the CPU default segmenter, no weights.

Plain `cv2.grabCut` builds and cuts a pixel graph for every prompt (about 0.6 s per iteration on a
640x480 image) and caches nothing. Here GrabCut's model (two colour GMMs, a contrast-sensitive
smoothness term, iterated re-estimation; Rother et al. 2004) is solved on a region graph that is
computed once per image, as in Lazy Snapping (Li et al. 2004):

- `_encode`: SLIC superpixels (OpenCV SLICO) on the Lab image at a capped working resolution, then per
  region its pixel count, mean colour and colour covariance, and the region adjacency graph with
  contrast-sensitive weights (GrabCut's beta over neighbouring region colour differences, times the
  length of the shared boundary). Everything that does not depend on the prompt.
- `_predict`: a trimap over regions from the prompt (box: outside = background, inside = probable
  foreground; a previous mask: its label map as probable foreground/background; clicks: hard seeds),
  then a few GrabCut iterations: fit both GMMs on the current labelling (weighted by pixel counts),
  unary = -log likelihood, pairwise = gamma x cached edge weights, min cut with scipy's max-flow.
  The region labelling is painted back to pixels at the image's full resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import sparse
from scipy.sparse.csgraph import breadth_first_order, connected_components, maximum_flow

from rsagent.segmenters.base import MaskPrompt, Prediction, Segmenter

# Trimap codes, as in OpenCV's GrabCut.
BGD, FGD, PR_BGD, PR_FGD = 0, 1, 2, 3

_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class _Encoded:
    """Prompt-independent state of one image."""

    labels: np.ndarray  # (h, w) int32 region index per working-resolution pixel
    scale: float  # working pixels per image pixel (<= 1)
    count: np.ndarray  # (n,) float64 pixels per region
    mean: np.ndarray  # (n, 3) float64 mean Lab colour
    cov: np.ndarray  # (n, 3, 3) float64 colour covariance inside the region
    centroid: np.ndarray  # (n, 2) float64 (x, y) in working pixels
    edges: np.ndarray  # (m, 2) int64 region pairs (lo < hi)
    edge_weight: np.ndarray  # (m,) float64 boundary length x exp(-beta * colour distance^2)
    n_regions: int


class GrabCutSegmenter(Segmenter):
    """GrabCut's energy on SLIC superpixels: encode once per image, each prompt is a small graph cut.

    Args:
        n_regions: target number of superpixels (the SLIC region size is derived from it) when
            `region_size` is not given.
        region_size: SLIC region size in working pixels (overrides `n_regions`).
        iterations: GrabCut iterations (GMM re-fit + cut) per prompt.
        gamma: weight of the smoothness term per unit of shared boundary.
        components: Gaussians per colour model.
        max_side: long side of the working resolution; larger images are downscaled for encoding and
            the mask is upsampled back.
        click_radius: pixels (working resolution) around a click whose regions become hard seeds.
        cache_size: encoded images kept (LRU).
    """

    name = "grabcut"

    def __init__(self, n_regions: int = 3000, region_size: int | None = None, iterations: int = 5,
                 gamma: float = 50.0, components: int = 5, max_side: int = 1024,
                 click_radius: int = 3, cache_size: int = 8) -> None:
        super().__init__(cache_size=cache_size)
        if iterations < 1 or components < 1 or max_side < 16 or n_regions < 2:
            raise ValueError("iterations and components must be >= 1, max_side >= 16, n_regions >= 2")
        if region_size is not None and region_size < 2:
            raise ValueError("region_size must be >= 2")
        self.n_regions = n_regions
        self.region_size = region_size
        self.iterations = iterations
        self.gamma = float(gamma)
        self.components = components
        self.max_side = max_side
        self.click_radius = click_radius

    @property
    def identifier(self) -> str:
        size = f"region_size={self.region_size}" if self.region_size else f"n_regions={self.n_regions}"
        return (f"grabcut-superpixel(slico {size}, max_side={self.max_side}, iterations={self.iterations}, "
                f"gamma={self.gamma:g}, components={self.components})")

    # --- encoding ------------------------------------------------------------------------------
    def _encode(self, image: np.ndarray) -> _Encoded:
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        work = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            work = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        h, w = work.shape[:2]
        lab = cv2.cvtColor(work.astype(np.float32) * (1.0 / 255.0), cv2.COLOR_RGB2Lab)  # L 0..100

        labels = self._superpixels(work, h, w)
        n = int(labels.max()) + 1
        flat = labels.ravel()
        count = np.bincount(flat, minlength=n).astype(np.float64)
        colours = lab.reshape(-1, 3).astype(np.float64)
        sums = np.stack([np.bincount(flat, colours[:, c], n) for c in range(3)], axis=1)
        mean = sums / count[:, None]
        second = np.empty((n, 3, 3))
        for a in range(3):
            for b in range(a, 3):
                second[:, a, b] = second[:, b, a] = np.bincount(flat, colours[:, a] * colours[:, b], n)
        cov = second / count[:, None, None] - mean[:, :, None] * mean[:, None, :]
        ys, xs = np.divmod(np.arange(h * w, dtype=np.float64), w)
        centroid = np.stack([np.bincount(flat, xs, n), np.bincount(flat, ys, n)], axis=1) / count[:, None]

        # Region adjacency from 4-connected pixel pairs; boundary length = number of crossing pairs.
        pairs = []
        for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
            a, b = a.ravel(), b.ravel()
            diff = a != b
            pairs.append((a[diff], b[diff]))
        a = np.concatenate([p[0] for p in pairs]).astype(np.int64)
        b = np.concatenate([p[1] for p in pairs]).astype(np.int64)
        key, length = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_counts=True)
        edges = np.stack([key // n, key % n], axis=1)
        if len(edges):
            dist2 = np.sum((mean[edges[:, 0]] - mean[edges[:, 1]]) ** 2, axis=1)
            mean_dist2 = float(np.average(dist2, weights=length))
            beta = 0.5 / mean_dist2 if mean_dist2 > 0 else 0.0
            edge_weight = length * np.exp(-beta * dist2)
        else:
            edge_weight = np.zeros(0)
        return _Encoded(labels=labels, scale=scale, count=count, mean=mean, cov=cov, centroid=centroid,
                        edges=edges, edge_weight=edge_weight, n_regions=n)

    def _superpixels(self, work: np.ndarray, h: int, w: int) -> np.ndarray:
        region_size = self.region_size or max(2, round(math.sqrt(h * w / self.n_regions)))
        if h * w <= 4 or min(h, w) < 2 * region_size:
            # Too small to bother: a regular grid of tiny cells.
            cell = max(1, min(h, w) // 4)
            ys, xs = np.arange(h) // cell, np.arange(w) // cell
            grid = ys[:, None] * (xs[-1] + 1) + xs[None, :]
            return grid.astype(np.int32)
        lab8 = cv2.cvtColor(cv2.GaussianBlur(work, (3, 3), 0), cv2.COLOR_RGB2Lab)
        slic = cv2.ximgproc.createSuperpixelSLIC(lab8, algorithm=cv2.ximgproc.SLICO, region_size=region_size)
        slic.iterate(10)
        slic.enforceLabelConnectivity(25)
        labels = slic.getLabels()
        _, inverse = np.unique(labels, return_inverse=True)  # make region ids contiguous
        return inverse.reshape(h, w).astype(np.int32)

    # --- prediction ----------------------------------------------------------------------------
    def _predict(self, state: _Encoded, shape: tuple[int, int], box, points, labels,
                 mask_prompt: MaskPrompt | None, multimask: bool) -> Prediction:
        height, width = shape
        s = state.scale
        h, w = state.labels.shape
        n = state.n_regions

        if points is not None and len(points):
            if labels is None or not np.all((labels == 0) | (labels == 1)):
                raise ValueError("labels must be 0 (background) or 1 (foreground)")
            inside = (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
            if not inside.all():
                raise ValueError(f"points outside the {width}x{height} image: {points[~inside].tolist()}")
        else:
            points, labels = None, None
        if mask_prompt is not None and mask_prompt.mask.shape != (height, width):
            raise ValueError(f"mask prompt shape {mask_prompt.mask.shape} != image shape {(height, width)}")

        box_frac = None
        if box is not None:
            x0, y0, x1, y1 = (float(v) for v in box)
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
                raise ValueError(f"box must be (x0, y0, x1, y1) with x0 < x1 and y0 < y1, got {box}")
            bx0 = min(max(math.floor(x0 * s), 0), w)
            by0 = min(max(math.floor(y0 * s), 0), h)
            bx1 = min(max(math.ceil(x1 * s), 0), w)
            by1 = min(max(math.ceil(y1 * s), 0), h)
            if bx1 <= bx0 or by1 <= by0:
                raise ValueError(f"box {box} lies outside the {width}x{height} image")
            inside = np.bincount(state.labels[by0:by1, bx0:bx1].ravel(), minlength=n)
            box_frac = inside / state.count
            if not (box_frac >= 0.5).any():  # a box smaller than a region: take what it touches
                box_frac = np.where(box_frac > 0, 1.0, 0.0)

        clicks = None
        if points is not None:
            px = np.clip(np.floor((points[:, 0] + 0.5) * s), 0, w - 1).astype(np.int64)
            py = np.clip(np.floor((points[:, 1] + 0.5) * s), 0, h - 1).astype(np.int64)
            clicks = (px, py, labels)

        # The starting trimap over regions.
        trimap = np.full(n, PR_BGD, np.int8)
        if mask_prompt is not None:
            prior = mask_prompt.mask.astype(np.float32)
            if s < 1.0:
                prior = cv2.resize(prior, (w, h), interpolation=cv2.INTER_AREA)
            frac = np.bincount(state.labels.ravel(), prior.ravel().astype(np.float64), n) / state.count
            trimap[frac >= 0.5] = PR_FGD
        elif box_frac is not None:
            soft_outside = False
            if clicks is not None:
                pos = clicks[2] == 1
                soft_outside = bool(np.any(pos & ((clicks[0] < bx0) | (clicks[0] >= bx1)
                                                  | (clicks[1] < by0) | (clicks[1] >= by1))))
            trimap[:] = PR_BGD if soft_outside else BGD
            trimap[box_frac >= 0.5] = PR_FGD
        elif clicks is not None and np.any(clicks[2] == 1):
            # Clicks only: start from a neighbourhood of the positive clicks.
            radius = 0.1 * math.hypot(h, w)
            pos = clicks[2] == 1
            cxy = np.stack([clicks[0][pos], clicks[1][pos]], axis=1).astype(np.float64)
            d2 = ((state.centroid[:, None, :] - cxy[None, :, :]) ** 2).sum(-1).min(axis=1)
            trimap[d2 <= radius * radius] = PR_FGD
        if clicks is not None:
            self._apply_clicks(state, trimap, clicks)

        seg, posterior = self._grabcut(state, trimap)
        if not seg.any():
            return Prediction(masks=np.zeros((1, height, width), bool), scores=np.zeros(1, np.float32))
        if box is None and mask_prompt is None:
            seg = self._keep_seeded(state, seg, trimap)
        score = float(np.average(posterior[seg], weights=state.count[seg]))
        mask = self._paint(state, seg, shape)
        return Prediction(masks=mask[None], scores=np.array([score], np.float32))

    def _apply_clicks(self, state: _Encoded, trimap: np.ndarray, clicks) -> None:
        """Regions under each click (and within click_radius) become hard seeds; later clicks win."""
        h, w = state.labels.shape
        r = self.click_radius
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        disc = (xx * xx + yy * yy) <= r * r
        for x, y, lab in zip(*clicks):
            ys, xs = y + yy[disc], x + xx[disc]
            ok = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
            regions = np.unique(state.labels[ys[ok], xs[ok]])
            trimap[regions] = FGD if lab == 1 else BGD
            trimap[state.labels[y, x]] = FGD if lab == 1 else BGD

    def _grabcut(self, state: _Encoded, trimap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Iterate GMM fit + min cut over regions; returns (foreground bool (n,), fg posterior (n,))."""
        seg = (trimap == FGD) | (trimap == PR_FGD)
        posterior = np.zeros(state.n_regions)
        if not seg.any():
            return seg, posterior
        if seg.all() and not (trimap == BGD).any():
            return seg, np.ones(state.n_regions)
        rng = np.random.default_rng(0)
        fg_assign = bg_assign = None
        weights = state.count
        for _ in range(self.iterations):
            if not seg.any() or seg.all():
                break
            fg_gmm, fg_assign = _fit_gmm(state.mean[seg], state.cov[seg], weights[seg], self.components, rng,
                                         None if fg_assign is None else fg_assign)
            bg_gmm, bg_assign = _fit_gmm(state.mean[~seg], state.cov[~seg], weights[~seg], self.components, rng,
                                         None if bg_assign is None else bg_assign)
            ll_fg = _gmm_loglik(fg_gmm, state.mean)
            ll_bg = _gmm_loglik(bg_gmm, state.mean)
            new = self._cut(state, trimap, -ll_fg * weights, -ll_bg * weights)
            posterior = 1.0 / (1.0 + np.exp(np.clip(ll_bg - ll_fg, -50, 50)))
            changed = not np.array_equal(new, seg)
            # Component assignments belong to the previous labelling; re-derive them next round.
            fg_assign = _assign(fg_gmm, state.mean[new]) if new.any() else None
            bg_assign = _assign(bg_gmm, state.mean[~new]) if (~new).any() else None
            seg = new
            if not changed:
                break
        return seg, posterior

    def _cut(self, state: _Encoded, trimap: np.ndarray, cost_fg: np.ndarray, cost_bg: np.ndarray) -> np.ndarray:
        """Min cut: source side = foreground. cost_fg/cost_bg: unary cost of each label per region."""
        n = state.n_regions
        base = np.minimum(cost_fg, cost_bg)
        cap_src = cost_bg - base  # paid when the region ends up background
        cap_snk = cost_fg - base
        hard_fg, hard_bg = trimap == FGD, trimap == BGD
        cap_src[hard_fg | hard_bg] = 0.0
        cap_snk[hard_fg | hard_bg] = 0.0
        pair = self.gamma * state.edge_weight
        finite = float(cap_src.sum() + cap_snk.sum() + 2.0 * pair.sum())
        unit = (2 ** 28) / max(finite, 1e-9)  # integer capacities: scale so sums fit in int32
        inf = 2 ** 29
        src_cap = np.round(cap_src * unit).astype(np.int64)
        snk_cap = np.round(cap_snk * unit).astype(np.int64)
        src_cap[hard_fg] = inf
        snk_cap[hard_bg] = inf
        pair_cap = np.round(pair * unit).astype(np.int64)
        source, sink = n, n + 1
        nodes = np.arange(n)
        e0, e1 = state.edges[:, 0], state.edges[:, 1]
        rows = np.concatenate([np.full(n, source), nodes, e0, e1, nodes, np.full(n, sink)])
        cols = np.concatenate([nodes, np.full(n, sink), e1, e0, np.full(n, source), nodes])
        caps = np.concatenate([src_cap, snk_cap, pair_cap, pair_cap, np.zeros(n, np.int64), np.zeros(n, np.int64)])
        graph = sparse.csr_matrix((caps.astype(np.int32), (rows, cols)), shape=(n + 2, n + 2))
        graph.sort_indices()
        flow = maximum_flow(graph, source, sink).flow
        residual = (graph - flow).tocsr()
        residual.data = (residual.data > 0).astype(np.int8)
        residual.eliminate_zeros()
        reached = breadth_first_order(residual, source, directed=True, return_predecessors=False)
        fg = np.zeros(n + 2, bool)
        fg[reached] = True
        return fg[:n]

    def _keep_seeded(self, state: _Encoded, seg: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        """Clicks only: keep the foreground regions connected (in the region graph) to a positive seed."""
        e = state.edges[seg[state.edges[:, 0]] & seg[state.edges[:, 1]]]
        n = state.n_regions
        adj = sparse.csr_matrix((np.ones(len(e), np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
        _, comp = connected_components(adj, directed=False)
        seeds = seg & (trimap == FGD)
        if not seeds.any():
            return seg
        return seg & np.isin(comp, np.unique(comp[seeds]))

    def _paint(self, state: _Encoded, seg: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Region labels to a bool mask at the image's full resolution."""
        work = seg[state.labels]
        if work.shape == tuple(shape):
            return work
        up = cv2.resize(work.astype(np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
        return up >= 0.5


# --- weighted GMMs on region statistics ------------------------------------------------------------
@dataclass
class _GMM:
    weight: np.ndarray  # (k,)
    mean: np.ndarray  # (k, 3)
    inv: np.ndarray  # (k, 3, 3) inverse covariances
    log_norm: np.ndarray  # (k,) log weight - 0.5 * (log det cov + 3 log 2 pi)


def _kmeanspp(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator, iters: int = 10) -> np.ndarray:
    """Weighted k-means with k-means++ seeding; returns an assignment (len(x),)."""
    p = w / w.sum()
    centres = [x[rng.choice(len(x), p=p)]]
    for _ in range(1, k):
        d2 = ((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1).min(axis=1)
        q = w * d2
        if q.sum() <= 0:
            break
        centres.append(x[rng.choice(len(x), p=q / q.sum())])
    c = np.asarray(centres)
    assign = np.zeros(len(x), np.int64)
    for _ in range(iters):
        assign = ((x[:, None, :] - c[None]) ** 2).sum(-1).argmin(axis=1)
        tot = np.bincount(assign, w, len(c))
        keep = tot > 0
        new = np.stack([np.bincount(assign, w * x[:, j], len(c)) for j in range(x.shape[1])], axis=1)
        c = np.where(keep[:, None], new / np.maximum(tot, 1e-12)[:, None], c)
    return assign


def _fit_gmm(mean: np.ndarray, cov: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator,
             assign: np.ndarray | None) -> tuple[_GMM, np.ndarray]:
    """Hard-assignment GMM fit (GrabCut's step 2) on regions with pixel-count weights.

    Component covariances use the regions' inner covariances too, i.e. the statistics of the pixels.
    """
    k = max(1, min(k, len(mean)))
    if assign is None or len(assign) != len(mean):
        assign = _kmeanspp(mean, w, k, rng)
    _, assign = np.unique(assign, return_inverse=True)
    k = int(assign.max()) + 1
    tot = np.bincount(assign, w, k)
    mu = np.stack([np.bincount(assign, w * mean[:, j], k) for j in range(3)], axis=1) / tot[:, None]
    d = mean - mu[assign]
    scatter = cov + d[:, :, None] * d[:, None, :]
    sig = np.stack([np.stack([np.bincount(assign, w * scatter[:, a, b], k) for b in range(3)], axis=1)
                    for a in range(3)], axis=1) / tot[:, None, None]
    sig = sig + np.eye(3)[None] * 0.5  # regulariser, Lab units
    inv = np.linalg.inv(sig)
    _, logdet = np.linalg.slogdet(sig)
    weight = tot / tot.sum()
    gmm = _GMM(weight=weight, mean=mu, inv=inv, log_norm=np.log(weight) - 0.5 * (logdet + 3 * _LOG_2PI))
    return gmm, assign


def _component_loglik(gmm: _GMM, x: np.ndarray) -> np.ndarray:
    d = x[:, None, :] - gmm.mean[None]  # (n, k, 3)
    maha = np.einsum("nki,kij,nkj->nk", d, gmm.inv, d)
    return gmm.log_norm[None] - 0.5 * maha


def _gmm_loglik(gmm: _GMM, x: np.ndarray) -> np.ndarray:
    comp = _component_loglik(gmm, x)
    top = comp.max(axis=1)
    return top + np.log(np.exp(comp - top[:, None]).sum(axis=1))


def _assign(gmm: _GMM, x: np.ndarray) -> np.ndarray:
    return _component_loglik(gmm, x).argmax(axis=1)
