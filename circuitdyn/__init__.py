"""circuitdyn: edge attribution patching on TransformerLens bridges, and how RL post-training rewires circuits.

Import what you use from the submodules: `circuitdyn.models`, `circuitdyn.graph`, `circuitdyn.attribution`,
`circuitdyn.tasks`, `circuitdyn.zoo`. Importing the package changes no global state.
"""

__version__ = "0.1.0"
