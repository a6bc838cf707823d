"""Annotated images for detection and segmentation: scenes, their loaders, and the synthetic set.

* :mod:`~headstart.data.scenes.scene`: :class:`Scene`, :class:`SceneSet`, :class:`Problem`;
* :mod:`~headstart.data.scenes.load`: :func:`load_scenes`, which picks a loader from the source;
* the loaders: :mod:`~headstart.data.scenes.coco`, :mod:`~headstart.data.scenes.voc`,
  :mod:`~headstart.data.scenes.masks`, and :mod:`~headstart.data.scenes.synthetic`
  (``builtin:animal-scenes``).
"""

from headstart.data.scenes.load import load_scenes
from headstart.data.scenes.scene import IGNORE_INDEX, Problem, Scene, SceneSet, make_scene

__all__ = ["IGNORE_INDEX", "Problem", "Scene", "SceneSet", "load_scenes", "make_scene"]
