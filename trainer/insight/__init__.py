"""The lecture made visible: `explain=true` (leaves, the backward graph, the gradient check,
`.grad` accumulation, `detach` vs `no_grad`) and figures of the optimizer's path."""
