"""Body-worn camera sequences (EgoSim views): a recipe's ``sequence:`` section.

- :mod:`.config` the recipe section (motion, rig, IMU, scene, output options);
- :mod:`.motion` motions (procedural clips, AMASS files, Anny sequences) resampled to frames;
- :mod:`.rigs` cameras on body sockets: offsets, spring-damper mounts, pinhole/fisheye lenses;
- :mod:`.imu` accelerometer and gyroscope readings of each mount;
- :mod:`.scene` procedural rooms and yards rendered with the body;
- :mod:`.views` ControlNet images of every camera of a frame;
- :mod:`.factory` :class:`SequenceFactory`, one shard sample per frame, one view record per camera.

The factory is imported lazily: ``synthgen.recipe`` imports :mod:`.config`, and the factory
imports ``synthgen.recipe``.
"""

__all__ = ["SequenceFactory"]


def __getattr__(name: str):
    if name == "SequenceFactory":
        from synthgen.sequences.factory import SequenceFactory

        return SequenceFactory
    raise AttributeError(f"module 'synthgen.sequences' has no attribute {name!r}")
