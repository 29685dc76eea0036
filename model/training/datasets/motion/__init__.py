"""Synthetic camera-motion videos: a virtual camera moving over real photographs and textures.

This package owns the motion data set: its classes and their conventions (below), the renderer
(clips, continuous multi-segment sequences, endless streams) and the ``Dataset`` training reads.
Everything is deterministic given a seed (numpy ``Generator`` only) and uses PIL/numpy; the
photographs are the ones bundled with scikit-image, so nothing is downloaded. Import from here;
the modules are its parts:

=================  ================================================================================
module             owns
=================  ================================================================================
``config``         the classes, what the content does for each, the photo splits, ``MotionConfig``
``scenes``         photographs and procedural textures mirrored to an infinite plane
``camera``         poses and camera paths: each segment's motion, zoom planning (units are there)
``render``         frames of a pose, distractors, the camera's look, one continuous video
``sequences``      ``render_clip``, ``iter_sequence``, ``render_sequence``, ``random_segments``
``dataset``        ``MotionDataset``
=================  ================================================================================

Conventions
-----------
Every class name says what the **camera** does, the way a person holding a phone would describe
their own gesture. What the model sees is the *content* moving the other way. Image axes: x points
right, y points down, as in the frame the model receives (NOT a mirrored "selfie" preview).

=========================  ======================================================================
class                      what the content does in the (un-mirrored) frame
=========================  ======================================================================
static                     nothing moves globally (sensor noise and small independent objects may)
pan left                   camera turns left  -> the whole scene slides to the RIGHT
pan right                  camera turns right -> the whole scene slides to the LEFT
tilt up                    camera tilts up    -> the whole scene slides DOWN
tilt down                  camera tilts down  -> the whole scene slides UP
zoom in                    camera zooms in / moves closer -> the scene GROWS about the centre
zoom out                   camera zooms out / moves away  -> the scene SHRINKS about the centre
rotate clockwise           camera rolls clockwise (seen from behind it, as its holder sees it)
                           -> the scene turns COUNTER-CLOCKWISE on screen
rotate counter-clockwise   camera rolls counter-clockwise -> the scene turns CLOCKWISE on screen
shake                      zero-mean jitter of position/roll/scale (a few Hz), no net motion
=========================  ======================================================================

The same labels in front of a fixed webcam. Turning the webcam (or a phone) by hand follows the
names literally. Moving the *content* instead (a book, a picture, a flat hand filling the view)
means producing the content motion of the table; for a person FACING the webcam that is:

=========================  ======================================================================
class                      gesture of a person facing the webcam, moving an object
=========================  ======================================================================
pan left / pan right       move it towards their OWN left / right (image right / left)
tilt up / tilt down        move it DOWN / UP
zoom in / zoom out         bring it closer / take it away
rotate clockwise / c-cw    turn it clockwise / counter-clockwise AS THEY SEE IT (facing the camera
                           flips the sense: the camera sees counter-clockwise / clockwise)
shake / static             wobble it back and forth a few times a second / hold it still
=========================  ======================================================================

Most browser and video-call previews are mirrored: there horizontal motion and the sense of
rotation look flipped relative to the frame the model gets; vertical motion and zoom do not.
Flipping a training clip left-right must therefore swap ``pan left``/``pan right`` and the two
rotations; flipping it upside down swaps the tilts and the rotations; playing it backwards swaps
every pair.
"""

from .config import (
    CLASS_INDEX,
    CLASSES,
    HELDOUT_PHOTOS,
    MOTIONS,
    NUM_CLASSES,
    PHOTO_FILES,
    PROCEDURAL,
    SPLITS,
    TRAIN_PHOTOS,
    MotionConfig,
    MotionSpec,
)
from .dataset import MotionDataset, clip_seed
from .render import clip_source
from .scenes import photo, procedural_texture
from .sequences import iter_sequence, random_segments, render_clip, render_sequence, segment_frames

__all__ = [
    "CLASSES",
    "CLASS_INDEX",
    "HELDOUT_PHOTOS",
    "MOTIONS",
    "NUM_CLASSES",
    "PHOTO_FILES",
    "PROCEDURAL",
    "SPLITS",
    "TRAIN_PHOTOS",
    "MotionConfig",
    "MotionDataset",
    "MotionSpec",
    "clip_seed",
    "clip_source",
    "iter_sequence",
    "photo",
    "procedural_texture",
    "random_segments",
    "render_clip",
    "render_sequence",
    "segment_frames",
]
