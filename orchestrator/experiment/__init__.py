"""Everything the driver does: the experiment file, the stages, the runners, cluster submission."""
