"""Geometric primitives the renderer ray-casts: one-sided rectangles (quads), capped cylinders and
ellipsoids, stored as structure-of-arrays in world coordinates (x forward along the road, y left,
z up, metres).

Every primitive carries a material index and an instance id (0 = static background). Boxes are
expanded into six quads whose face coordinates (s along e1, q along e2, metres from the face's
corner) are fixed to the surface, so textures move rigidly with the object.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Box faces in the box's local frame: (normal axis, sign, e1 (axis, sign), e2 (axis, sign)); e1 x e2 = n.
_BOX_FACES = (
    (0, +1, (1, +1), (2, +1)),   # +x (front)
    (0, -1, (1, -1), (2, +1)),   # -x (rear)
    (1, +1, (0, -1), (2, +1)),   # +y (left)
    (1, -1, (0, +1), (2, +1)),   # -y (right)
    (2, +1, (0, +1), (1, +1)),   # +z (top)
    (2, -1, (1, +1), (0, +1)),   # -z (bottom)
)
FACE_FRONT, FACE_REAR, FACE_LEFT, FACE_RIGHT, FACE_TOP, FACE_BOTTOM = range(6)


def rot_z(yaw: float) -> np.ndarray:
    """float64 [3,3] rotation about +z by yaw (rad)."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


@dataclass
class Quads:
    """N one-sided rectangles. center/e1/e2/normal float64 [N,3]; half float64 [N,2] (along e1, e2);
    material int32 [N]; inst int32 [N]. Visible only from the side the normal points to."""
    center: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    normal: np.ndarray
    half: np.ndarray
    material: np.ndarray
    inst: np.ndarray

    def __len__(self) -> int:
        return len(self.center)

    def corners(self) -> np.ndarray:
        """float64 [N,4,3] corners in order (-,-), (+,-), (+,+), (-,+)."""
        a = self.e1 * self.half[:, :1]
        b = self.e2 * self.half[:, 1:]
        c = self.center
        return np.stack([c - a - b, c + a - b, c + a + b, c - a + b], axis=1)


@dataclass
class Cylinders:
    """N capped cylinders. center float64 [N,3] (mid-axis), rot float64 [N,3,3] (local z = axis),
    radius, half_height float64 [N]; material, inst int32 [N]."""
    center: np.ndarray
    rot: np.ndarray
    radius: np.ndarray
    half_height: np.ndarray
    material: np.ndarray
    inst: np.ndarray

    def __len__(self) -> int:
        return len(self.center)

    def half_extents(self) -> np.ndarray:
        return np.stack([self.radius, self.radius, self.half_height], axis=1)


@dataclass
class Ellipsoids:
    """N ellipsoids. center float64 [N,3], rot float64 [N,3,3], radii float64 [N,3]; material, inst int32 [N]."""
    center: np.ndarray
    rot: np.ndarray
    radii: np.ndarray
    material: np.ndarray
    inst: np.ndarray

    def __len__(self) -> int:
        return len(self.center)

    def half_extents(self) -> np.ndarray:
        return self.radii


def empty_quads() -> Quads:
    z3 = np.zeros((0, 3))
    zi = np.zeros(0, np.int32)
    return Quads(z3, z3, z3, z3, np.zeros((0, 2)), zi, zi)


def empty_cylinders() -> Cylinders:
    return Cylinders(np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros(0), np.zeros(0), np.zeros(0, np.int32),
                     np.zeros(0, np.int32))


def empty_ellipsoids() -> Ellipsoids:
    return Ellipsoids(np.zeros((0, 3)), np.zeros((0, 3, 3)), np.zeros((0, 3)), np.zeros(0, np.int32),
                      np.zeros(0, np.int32))


def concat_quads(items: list[Quads]) -> Quads:
    items = [q for q in items if len(q)] or [empty_quads()]
    return Quads(*(np.concatenate([getattr(q, f) for q in items]) for f in
                   ('center', 'e1', 'e2', 'normal', 'half', 'material', 'inst')))


def concat_cylinders(items: list[Cylinders]) -> Cylinders:
    items = [c for c in items if len(c)] or [empty_cylinders()]
    return Cylinders(*(np.concatenate([getattr(c, f) for c in items]) for f in
                       ('center', 'rot', 'radius', 'half_height', 'material', 'inst')))


def concat_ellipsoids(items: list[Ellipsoids]) -> Ellipsoids:
    items = [e for e in items if len(e)] or [empty_ellipsoids()]
    return Ellipsoids(*(np.concatenate([getattr(e, f) for e in items]) for f in
                        ('center', 'rot', 'radii', 'material', 'inst')))


def boxes_to_quads(center: np.ndarray, rot: np.ndarray, half: np.ndarray, face_material: np.ndarray,
                   inst: np.ndarray, faces: tuple[int, ...] = (0, 1, 2, 3, 4, 5)) -> Quads:
    """Quads of B oriented boxes.

    center float64 [B,3]; rot float64 [B,3,3] (columns = box axes in world); half float64 [B,3];
    face_material int32 [B,6] (order front, rear, left, right, top, bottom); inst int32 [B].
    `faces` selects which faces to emit (e.g. skip bottoms that rest on the ground).
    """
    out = []
    for f in faces:
        ax, sg, (a1, s1), (a2, s2) = _BOX_FACES[f]
        n = rot[:, :, ax] * sg
        out.append(Quads(center=center + n * half[:, ax:ax + 1],
                         e1=rot[:, :, a1] * s1, e2=rot[:, :, a2] * s2, normal=n,
                         half=np.stack([half[:, a1], half[:, a2]], axis=1),
                         material=face_material[:, f].astype(np.int32), inst=inst.astype(np.int32)))
    return concat_quads(out)


def transform_quads(q: Quads, R: np.ndarray, t: np.ndarray) -> Quads:
    """Quads moved by the rigid transform x -> R x + t (R [3,3], t [3])."""
    return Quads(q.center @ R.T + t, q.e1 @ R.T, q.e2 @ R.T, q.normal @ R.T, q.half, q.material, q.inst)


def transform_cylinders(c: Cylinders, R: np.ndarray, t: np.ndarray) -> Cylinders:
    return Cylinders(c.center @ R.T + t, R[None] @ c.rot, c.radius, c.half_height, c.material, c.inst)


def transform_ellipsoids(e: Ellipsoids, R: np.ndarray, t: np.ndarray) -> Ellipsoids:
    return Ellipsoids(e.center @ R.T + t, R[None] @ e.rot, e.radii, e.material, e.inst)


def box_corners(center: np.ndarray, rot: np.ndarray, half: np.ndarray) -> np.ndarray:
    """float64 [N,8,3] corners of oriented boxes (center [N,3], rot [N,3,3], half [N,3])."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    local = signs[None] * half[:, None, :]                       # [N,8,3]
    return center[:, None, :] + np.einsum('nij,nkj->nki', rot, local)


# The 12 edges of a box_corners() box (corner index = 4*sx + 2*sy + sz with s in {0,1}).
BOX_EDGES = np.array([(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count('1') == 1])
QUAD_EDGES = np.array([(0, 1), (1, 2), (2, 3), (3, 0)])


@dataclass
class PrimitiveSet:
    """Everything the renderer intersects at one instant."""
    quads: Quads
    cylinders: Cylinders
    ellipsoids: Ellipsoids

    @staticmethod
    def concat(items: list['PrimitiveSet']) -> 'PrimitiveSet':
        return PrimitiveSet(concat_quads([p.quads for p in items]),
                            concat_cylinders([p.cylinders for p in items]),
                            concat_ellipsoids([p.ellipsoids for p in items]))

    def transformed(self, R: np.ndarray, t: np.ndarray) -> 'PrimitiveSet':
        return PrimitiveSet(transform_quads(self.quads, R, t), transform_cylinders(self.cylinders, R, t),
                            transform_ellipsoids(self.ellipsoids, R, t))


class PrimitiveBuilder:
    """Accumulates primitives (boxes, quads, cylinders, ellipsoids) and freezes them into a PrimitiveSet."""

    def __init__(self):
        self._quads: list[Quads] = []
        self._cyl: list[tuple] = []
        self._ell: list[tuple] = []
        self._box: list[tuple] = []

    def box(self, center, half, face_material, inst: int = 0, yaw: float = 0.0, rot=None,
            faces: tuple[int, ...] = (0, 1, 2, 3, 4, 5)) -> None:
        """Oriented box. face_material: one int or 6 ints (front, rear, left, right, top, bottom)."""
        fm = np.broadcast_to(np.asarray(face_material, dtype=np.int32), (6,)).copy()
        R = rot_z(yaw) if rot is None else np.asarray(rot, dtype=np.float64)
        self._box.append((np.asarray(center, float), R, np.asarray(half, float), fm, int(inst), tuple(faces)))

    def quad(self, center, e1, e2, half, material: int, inst: int = 0) -> None:
        e1 = np.asarray(e1, float)
        e2 = np.asarray(e2, float)
        n = np.cross(e1, e2)
        self._quads.append(Quads(np.asarray(center, float)[None], e1[None], e2[None], n[None],
                                 np.asarray(half, float)[None], np.array([material], np.int32),
                                 np.array([inst], np.int32)))

    def cylinder(self, center, radius: float, half_height: float, material: int, inst: int = 0, rot=None) -> None:
        R = np.eye(3) if rot is None else np.asarray(rot, float)
        self._cyl.append((np.asarray(center, float), R, float(radius), float(half_height), int(material), int(inst)))

    def ellipsoid(self, center, radii, material: int, inst: int = 0, rot=None) -> None:
        R = np.eye(3) if rot is None else np.asarray(rot, float)
        self._ell.append((np.asarray(center, float), R, np.asarray(radii, float), int(material), int(inst)))

    def build(self) -> PrimitiveSet:
        quads = list(self._quads)
        by_faces: dict[tuple, list] = {}
        for b in self._box:
            by_faces.setdefault(b[5], []).append(b)
        for faces, boxes in by_faces.items():
            quads.append(boxes_to_quads(np.array([b[0] for b in boxes]), np.array([b[1] for b in boxes]),
                                        np.array([b[2] for b in boxes]), np.array([b[3] for b in boxes]),
                                        np.array([b[4] for b in boxes], np.int32), faces))
        if self._cyl:
            cols = list(zip(*self._cyl))
            cyl = Cylinders(np.array(cols[0]), np.array(cols[1]), np.array(cols[2]), np.array(cols[3]),
                            np.array(cols[4], np.int32), np.array(cols[5], np.int32))
        else:
            cyl = empty_cylinders()
        if self._ell:
            cols = list(zip(*self._ell))
            ell = Ellipsoids(np.array(cols[0]), np.array(cols[1]), np.array(cols[2]), np.array(cols[3], np.int32),
                             np.array(cols[4], np.int32))
        else:
            ell = empty_ellipsoids()
        return PrimitiveSet(concat_quads(quads), cyl, ell)
