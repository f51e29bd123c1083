"""Forward camera of the simulated Go2 (ROS-free): per-pixel ray casting with numpy + OpenCV.

A pinhole camera (perspective projection) mounted on the robot's head casts one ray per pixel
(per sub-pixel with ``supersample``) against the floor, the four walls and every object
(spheres and yawed cubes); the nearest hit wins, so occlusion and depth ordering are exact.
Shading: checkered floor with contact shadows, striped walls, Lambert + ambient light on the
objects, distance falloff. Per-frame lighting noise (gain, colour cast) and sensor noise come
from the ``rng`` passed to :meth:`Camera.render`. Images are BGR uint8, like the Go2 driver's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from .world import COLORS, World

SKY, FLOOR = -1, -2
WALLS = (-3, -4, -5, -6)  # +x, -x, +y, -y
_WALL_TINTS = {-3: (196, 200, 205), -4: (180, 190, 200), -5: (205, 196, 188), -6: (188, 200, 192)}
_LIGHT = np.array([0.35, 0.25, 0.9]) / np.linalg.norm([0.35, 0.25, 0.9])


@dataclass
class CameraConfig:
    width: int = 160
    height: int = 120
    hfov_deg: float = 90.0
    mount_height: float = 0.35      # m above the floor
    mount_forward: float = 0.28     # m ahead of the body centre
    pitch_deg: float = 5.0          # looking down
    supersample: int = 2            # rays per pixel per axis (anti-aliasing)
    noise_std: float = 3.0          # sensor noise (grey levels)
    gain_jitter: float = 0.12       # per-frame brightness gain +-
    tint_jitter: float = 0.04       # per-frame colour cast +-
    near: float = 0.05

    @property
    def fx(self) -> float:
        return (self.width / 2.0) / math.tan(math.radians(self.hfov_deg) / 2.0)

    @property
    def fy(self) -> float:
        return self.fx

    @property
    def cx(self) -> float:
        return self.width / 2.0

    @property
    def cy(self) -> float:
        return self.height / 2.0

    @property
    def vfov_deg(self) -> float:
        return math.degrees(2.0 * math.atan((self.height / 2.0) / self.fy))

    def k_matrix(self) -> Tuple[float, ...]:
        return (self.fx, 0.0, self.cx, 0.0, self.fy, self.cy, 0.0, 0.0, 1.0)

    def p_matrix(self) -> Tuple[float, ...]:
        return (self.fx, 0.0, self.cx, 0.0, 0.0, self.fy, self.cy, 0.0, 0.0, 0.0, 1.0, 0.0)


@dataclass
class RenderInfo:
    ids: np.ndarray                 # (H, W) int: object index, or SKY/FLOOR/WALLS codes
    depth: np.ndarray               # (H, W) float: ray length to the hit (m)
    visible_pixels: Dict[str, int]  # object name -> pixels it covers

    def bbox(self, name_index: int) -> Optional[Tuple[int, int, int, int]]:
        ys, xs = np.nonzero(self.ids == name_index)
        if len(xs) == 0:
            return None
        return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


class Camera:
    def __init__(self, config: Optional[CameraConfig] = None):
        self.cfg = config or CameraConfig()
        c = self.cfg
        s = max(1, int(c.supersample))
        w, h = c.width * s, c.height * s
        u = (np.arange(w) + 0.5) / s
        v = (np.arange(h) + 0.5) / s
        uu, vv = np.meshgrid(u, v)
        # camera frame (x right, y down, z forward) -> body frame (x fwd, y left, z up)
        xc = (uu - c.cx) / c.fx
        yc = (vv - c.cy) / c.fy
        d = np.stack([np.ones_like(xc), -xc, -yc], axis=-1)
        p = math.radians(c.pitch_deg)  # rotate about the body y axis, nose down
        rot = np.array([[math.cos(p), 0.0, math.sin(p)], [0.0, 1.0, 0.0],
                        [-math.sin(p), 0.0, math.cos(p)]])
        d = d @ rot.T
        self._dirs_body = (d / np.linalg.norm(d, axis=-1, keepdims=True)).reshape(-1, 3)
        self._shape = (h, w)
        self._s = s

    def camera_position(self, pose) -> np.ndarray:
        x, y, yaw = pose
        return np.array([x + self.cfg.mount_forward * math.cos(yaw),
                         y + self.cfg.mount_forward * math.sin(yaw), self.cfg.mount_height])

    def render(self, world: World, pose=None, rng: Optional[np.random.Generator] = None,
               with_info: bool = False):
        """Image (H, W, 3) BGR uint8 from ``pose`` (default: the robot's). ``rng`` adds the
        lighting/sensor noise (None: a clean image). ``with_info``: also a :class:`RenderInfo`."""
        pose = world.pose if pose is None else pose
        o = self.camera_position(pose)
        yaw = pose[2]
        cy_, sy_ = math.cos(yaw), math.sin(yaw)
        db = self._dirs_body
        d = np.stack([db[:, 0] * cy_ - db[:, 1] * sy_, db[:, 0] * sy_ + db[:, 1] * cy_, db[:, 2]],
                     axis=1)
        n = d.shape[0]
        best = np.full(n, np.inf)
        ids = np.full(n, SKY, dtype=np.int32)
        normals = np.zeros((n, 3))
        near = self.cfg.near

        def take(t, code, idx=None, nrm=None):
            if idx is None:
                hit = (t > near) & (t < best)
                best[hit] = t[hit]
                ids[hit] = code
                return
            sel = (t > near) & (t < best[idx])
            j = idx[sel]
            best[j] = t[sel]
            ids[j] = code
            normals[j] = nrm[sel]

        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            # floor z = 0
            t = np.where(d[:, 2] < -1e-9, -o[2] / d[:, 2], np.inf)
            take(t, FLOOR)
            # walls
            half = world.half
            for code, axis, sign in ((-3, 0, 1.0), (-4, 0, -1.0), (-5, 1, 1.0), (-6, 1, -1.0)):
                comp = d[:, axis]
                t = np.where(comp * sign > 1e-9, (sign * half - o[axis]) / comp, np.inf)
                z = o[2] + t * d[:, 2]
                t = np.where((z >= 0.0) & (z <= world.cfg.wall_height), t, np.inf)
                take(t, code)
            # objects: only the rays inside each object's bounding cone
            for k, obj in enumerate(world.objects):
                c = np.array([obj.x, obj.y, obj.size])
                oc = c - o
                dist = float(np.linalg.norm(oc))
                bound = obj.size * (1.0 if obj.shape == "ball" else math.sqrt(3.0)) * 1.01
                if dist <= bound:
                    idx = np.arange(n)
                else:
                    cos_cone = math.cos(math.asin(bound / dist))
                    idx = np.nonzero(d @ (oc / dist) >= cos_cone)[0]
                if idx.size == 0:
                    continue
                ds = d[idx]
                if obj.shape == "ball":
                    b = ds @ (-oc)
                    disc = b * b - (oc @ oc - obj.size ** 2)
                    t = np.where(disc >= 0.0, -b - np.sqrt(np.maximum(disc, 0.0)), np.inf)
                    hitp = o + np.where(np.isfinite(t), t, 0.0)[:, None] * ds
                    nrm = (hitp - c) / obj.size
                else:
                    t, nrm = _ray_box(o, ds, obj)
                take(t, k, idx, nrm)
        ids = ids.reshape(self._shape)
        depth = best.reshape(self._shape)
        img = self._shade(world, o, d.reshape(self._shape + (3,)), ids, depth,
                          normals.reshape(self._shape + (3,)))
        if self._s > 1:
            img = cv2.resize(img, (self.cfg.width, self.cfg.height), interpolation=cv2.INTER_AREA)
        if rng is not None:
            img = self._noise(img, rng)
        img = np.clip(img, 0, 255).astype(np.uint8)
        if not with_info:
            return img
        s = self._s
        ids_small = ids[s // 2::s, s // 2::s]
        depth_small = depth[s // 2::s, s // 2::s]
        counts = {obj.name: int(np.count_nonzero(ids_small == k))
                  for k, obj in enumerate(world.objects)}
        return img, RenderInfo(ids_small, depth_small, counts)

    # -- shading ----------------------------------------------------------------------------
    def _shade(self, world, o, d, ids, depth, normals) -> np.ndarray:
        shape = ids.shape
        ids = ids.ravel()
        d = d.reshape(-1, 3)
        normals = normals.reshape(-1, 3)
        dd = np.where(np.isfinite(depth.ravel()), depth.ravel(), 0.0)
        falloff = 1.0 / (1.0 + 0.04 * dd)
        k = len(world.objects)
        palette = np.zeros((k + 6, 3), np.float32)  # row = id + 6
        for code, tint in _WALL_TINTS.items():
            palette[code + 6] = tint
        palette[FLOOR + 6] = (128, 138, 146)
        palette[SKY + 6] = (232, 222, 205)
        for j, obj in enumerate(world.objects):
            palette[j + 6] = COLORS[obj.color]
        col = palette[ids + 6]
        factor = np.where(ids == SKY, 1.0, falloff)
        spec = None

        # floor: 0.5 m checker, contact shadows under objects
        fl = np.nonzero(ids == FLOOR)[0]
        if fl.size:
            fx = o[0] + dd[fl] * d[fl, 0]
            fy = o[1] + dd[fl] * d[fl, 1]
            dark = ((np.floor(fx * 2.0) + np.floor(fy * 2.0)) % 2) == 0
            shade = np.where(dark, 0.82, 1.0)
            for obj in world.objects:
                reach = obj.radius * 2.5
                j = np.nonzero((np.abs(fx - obj.x) < reach) & (np.abs(fy - obj.y) < reach))[0]
                if j.size:
                    r = np.hypot(fx[j] - obj.x, fy[j] - obj.y) / (obj.radius * 1.15)
                    shade[j] *= 1.0 - 0.45 * np.exp(-r ** 4)
            factor[fl] *= shade
        # walls: vertical stripes every 0.75 m, dark skirting board
        wl = np.nonzero((ids <= -3) & (ids >= -6))[0]
        if wl.size:
            on_x = ids[wl] >= -4  # walls at +-x run along y
            hx = o[0] + dd[wl] * d[wl, 0]
            hy = o[1] + dd[wl] * d[wl, 1]
            z = o[2] + dd[wl] * d[wl, 2]
            along = np.where(on_x, hy, hx)
            stripe = 1.0 - 0.08 * (np.floor(along / 0.75) % 2)
            factor[wl] *= stripe * np.where(z < 0.12, 0.7, 1.0)
        # objects: ambient + Lambert, a specular highlight on balls
        ob = np.nonzero(ids >= 0)[0]
        if ob.size:
            nrm = normals[ob]
            ndl = nrm @ _LIGHT
            factor[ob] *= 0.38 + 0.62 * np.clip(ndl, 0.0, 1.0)
            is_ball = np.array([o_.shape == "ball" for o_ in world.objects] + [False])[ids[ob]]
            if is_ball.any():
                b = ob[is_ball]
                nb = nrm[is_ball]
                refl = 2.0 * ndl[is_ball][:, None] * nb - _LIGHT
                spec = (b, 110.0 * np.clip(np.sum(refl * -d[b], axis=1), 0.0, 1.0) ** 24)
        img = col * factor[:, None].astype(np.float32)
        if spec is not None:
            img[spec[0]] += spec[1][:, None].astype(np.float32)
        return img.reshape(shape + (3,))

    def _noise(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.cfg
        gain = 1.0 + rng.uniform(-c.gain_jitter, c.gain_jitter)
        tint = 1.0 + rng.uniform(-c.tint_jitter, c.tint_jitter, size=3)
        out = img.astype(np.float32) * (gain * tint)[None, None, :]
        if c.noise_std > 0:
            out += rng.normal(0.0, c.noise_std, size=out.shape).astype(np.float32)
        return out


def _ray_box(o: np.ndarray, d: np.ndarray, obj) -> Tuple[np.ndarray, np.ndarray]:
    """Ray/cube intersection (slab method in the cube's frame): t (inf on miss) and normals."""
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    rel = o - np.array([obj.x, obj.y, obj.size])
    ol = np.array([c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], rel[2]])
    dl = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], d[:, 2]], axis=1)
    h = obj.size
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = 1.0 / dl
        t1 = (-h - ol) * inv
        t2 = (h - ol) * inv
    tmin = np.minimum(t1, t2)
    tmax = np.maximum(t1, t2)
    tmin[np.isnan(tmin)] = -np.inf
    tmax[np.isnan(tmax)] = np.inf
    axis = np.argmax(tmin, axis=1)
    tn = tmin[np.arange(len(d)), axis]
    tf = np.min(tmax, axis=1)
    hit = (tn <= tf) & (tf > 0.0)
    t = np.where(hit, tn, np.inf)
    nl = np.zeros_like(dl)
    nl[np.arange(len(d)), axis] = -np.sign(dl[np.arange(len(d)), axis])
    nrm = np.stack([c * nl[:, 0] - s * nl[:, 1], s * nl[:, 0] + c * nl[:, 1], nl[:, 2]], axis=1)
    return t, nrm


def visible_objects(info: RenderInfo, min_pixels: int = 4) -> Dict[str, int]:
    return {k: v for k, v in info.visible_pixels.items() if v >= min_pixels}
