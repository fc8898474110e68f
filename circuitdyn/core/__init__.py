"""The foundation every layer may use: atomic writes, output paths, choices parsed into Enums, config field
checks, the requires_grad guard, and what autograd saves for a backward. Nothing here imports torch models
or any other circuitdyn package."""
