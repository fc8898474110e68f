"""The runtime type checker the test run applies to every circuitdyn function (jaxtyping shapes + beartype):
`pytest --jaxtyping-packages=circuitdyn,tests.checker`. PEP 484's numeric tower is on, so an int
is accepted where a float is annotated, as Python's own typing rules say."""

from beartype import BeartypeConf, beartype

checker = beartype(conf=BeartypeConf(is_pep484_tower=True))
