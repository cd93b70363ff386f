"""Where a stage's trials and tasks run: :class:`~.local.LocalRunner` (``--local``, this process) or
:class:`~.ray.RayRunner` (Ray Tune and Ray Train), both behind :class:`~.base.Runner`."""
