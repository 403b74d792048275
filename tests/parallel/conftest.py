"""Shared setup of the layout tests: the mesh and logical-axis rules of a config."""
import pytest

from moejax.parallel.mesh import make_mesh
from moejax.parallel.sharding import logical_axis_rules


def _mesh_and_rules(cfg, devices=None):
  layout = make_mesh(cfg, devices)
  return layout, logical_axis_rules(layout, cfg.parallel.sequence_parallel)


@pytest.fixture(scope="session")
def mesh_and_rules():
  """mesh_and_rules(cfg, devices=None) -> (MeshLayout, rules) of the config's parallel layout."""
  return _mesh_and_rules
