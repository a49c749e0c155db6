"""Captions from the scene graph: who/what is there, what they do, which way (relative to the camera at
the first frame) and how the camera moves. Wording varies with the scene seed; the facts never do."""

from __future__ import annotations

import numpy as np

GROUND_PHRASES = {"grass": "on the grass", "stone": "on a stone floor", "sand": "on sand",
                  "wood": "on a wooden floor", "tiles": "on a tiled floor"}
MIN_SPEED = 0.2     # m/s below which a motion has no direction


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _direction(velocity: np.ndarray, right: np.ndarray, forward: np.ndarray) -> str:
    """'to the left' / 'to the right' / 'toward the camera' / 'away from the camera' ('' if too slow)."""
    lateral, depth = float(velocity @ right), float(velocity @ forward)
    if np.hypot(lateral, depth) < MIN_SPEED:
        return ""
    if abs(lateral) >= abs(depth):
        return "to the right" if lateral > 0 else "to the left"
    return "away from the camera" if depth > 0 else "toward the camera"


def _object_noun(rng, obj) -> str:
    body = obj.body
    nouns = {"sphere": ["ball", "sphere"], "box": ["box", "block", "crate"],
             "cylinder": ["cylinder", "drum"] if not body.lying else ["cylinder", "roller"],
             "capsule": ["capsule", "pill-shaped object"]}[body.kind]
    noun = nouns[rng.integers(len(nouns))]
    size = max(body.size)
    adjective = ""
    if rng.uniform() < 0.3:
        adjective = "small " if size < 0.28 else ("large " if size > 0.4 else "")
    return f"{_article(adjective or obj.colour)} {adjective}{obj.colour} {noun}"


def _object_verb(rng, obj, direction: str, came_to_rest: bool, landed: bool) -> str:
    motion = obj.body.motion
    if motion in ("bounce", "fall") and not landed:
        return ["falls", "drops", "falls toward the ground"][rng.integers(3)]
    if motion == "bounce":
        verb = ["bounces", "bounces on the ground", "drops and bounces"][rng.integers(3)]
        return f"{verb} {direction}".strip()
    if motion == "fall":
        return ["falls to the ground", "drops onto the ground", "falls and lands"][rng.integers(3)]
    if motion in ("roll", "slide"):
        verb = "rolls" if motion == "roll" else "slides"
        if not direction:
            return f"{verb} a little"
        tail = " and stops" if came_to_rest and rng.uniform() < 0.5 else ""
        return f"{verb} {direction}{tail}"
    still = ["rests on the ground", "sits still", "stays in place"]
    if obj.body.kind in ("cylinder", "capsule") and not obj.body.lying:
        still.append("stands upright")
    if obj.body.lying:
        still.append("lies on the ground")
    return still[rng.integers(len(still))]


def _person_phrase(rng, spec, direction: str) -> str:
    who = [f"a person in a {spec.shirt} shirt", f"a person wearing {spec.shirt}",
           f"someone in a {spec.shirt} top and {spec.pants} trousers"][rng.integers(3)]
    if spec.action in ("walk", "run"):
        verb = {"walk": ["walks", "strolls"], "run": ["runs", "jogs"]}[spec.action][rng.integers(2)]
        return f"{who} {verb} {direction}".strip()
    if spec.action == "wave":
        return f"{who} " + [f"waves with the {spec.waving_hand} hand", "waves", "stands and waves"][rng.integers(3)]
    return f"{who} " + ["jumps up and down", "jumps in place", "keeps jumping"][rng.integers(3)]


def _camera_phrase(rng, camera) -> str:
    side = "right" if camera.rate > 0 else "left"
    if camera.motion == "pan":
        return [f"the camera pans {side}", f"the camera pans to the {side}", f"the camera turns {side}"][rng.integers(3)]
    if camera.motion == "orbit":
        return [f"the camera orbits to the {side} around the scene", f"the camera circles {side} around the scene",
                f"the camera moves around the scene to the {side}"][rng.integers(3)]
    return ["the camera is static", "the camera stays still", "static camera"][rng.integers(3)]


def describe_scene(scene, traj, R_c2w: np.ndarray, eye: np.ndarray) -> str:
    """One-sentence caption of a rendered scene (directions relative to the first frame's camera)."""
    rng = np.random.default_rng([scene.seed, 0xCA97])
    right = R_c2w[0][:, 0] * np.array([1, 0, 1])
    forward = R_c2w[0][:, 2] * np.array([1, 0, 1])
    right, forward = right / np.linalg.norm(right), forward / np.linalg.norm(forward)
    clip_end = float(traj.times[-2]) if len(traj.times) > 1 else 0.0  # the last frame is simulation-only
    clauses = []
    for spec in scene.persons:
        clauses.append(_person_phrase(rng, spec, _direction(spec.forward() * spec.speed, right, forward)))
    for i, obj in enumerate(scene.objects):
        centre = traj.centre[:, i]
        velocity = np.array(obj.body.velocity, dtype=np.float64) * np.array([1, 0, 1])
        came_to_rest = len(centre) > 1 and np.linalg.norm(centre[-1] - centre[-2]) < 1e-4
        landed = any(t <= clip_end for t in traj.bounces[i])
        verb = _object_verb(rng, obj, _direction(velocity, right, forward), came_to_rest, landed)
        clauses.append(f"{_object_noun(rng, obj)} {verb}")
    order = rng.permutation(len(clauses)) if rng.uniform() < 0.3 else np.arange(len(clauses))
    clauses = [clauses[i] for i in order]
    if not clauses:
        body = "an empty scene"
    elif len(clauses) == 1:
        body = clauses[0]
    else:
        joiner = [" while ", ", and ", " as "][rng.integers(3)]
        body = clauses[0] + joiner + (", ".join(clauses[1:-1]) + " and " if len(clauses) > 2 else "") + clauses[-1]
    if rng.uniform() < 0.35:
        body = f"{GROUND_PHRASES[scene.ground.name]}, {body}"
    return f"{body}; {_camera_phrase(rng, scene.camera)}".replace("  ", " ")
