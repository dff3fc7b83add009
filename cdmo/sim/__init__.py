"""The discrete-event cluster simulator and its policies; may import every part of cdmo.

- :mod:`cdmo.sim.scenario`: the scenario YAML format (``load_scenario``, ``InvalidScenario``);
- :mod:`cdmo.sim.workload`: pods from Poisson streams or trace files (``generate_workload``);
- :mod:`cdmo.sim.engine`: simulated GPUs, the scheduler model and the event loop (``Simulation``);
- :mod:`cdmo.sim.policies`, :mod:`cdmo.sim.dynamic`, :mod:`cdmo.sim.firstfit`: static layouts,
  cdmo's planner and node agent, and the nos baseline behind one ``Policy`` interface;
- :mod:`cdmo.sim.metrics`, :mod:`cdmo.sim.report`, :mod:`cdmo.sim.runner`: figures, table, JSON,
  plot, and ``simulate(scenario)`` that ties them together (what ``cdmo simulate`` calls).

See docs/simulate.md.
"""
