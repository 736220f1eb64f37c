"""Training (tooling, never imported by the runtime): the correspondence network with its data and
EPro-PnP's Monte Carlo pose loss (AMIS, the differentiable PnP cost), and the RGB proposal head."""
