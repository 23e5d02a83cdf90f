"""Body-worn camera sequences (EgoSim views): the factory of a recipe's ``sequence:`` section.

- :mod:`.motion` motions (procedural clips, AMASS files, Anny sequences) resampled to frames;
- :mod:`.rigs` cameras on body sockets: offsets, spring-damper mounts, pinhole/fisheye lenses;
- :mod:`.imu` accelerometer and gyroscope readings of each mount;
- :mod:`.scene` procedural rooms and yards rendered with the body;
- :mod:`.views` ControlNet images of every camera of a frame;
- :mod:`.factory` :class:`SequenceFactory`, one shard sample per frame, one view record per camera.

The section's schema lives with every other recipe section in :mod:`synthgen.recipe`.
"""

from synthgen.sequences.factory import SequenceFactory

__all__ = ["SequenceFactory"]
