"""HTTP layer: request parsing, validation and mapping to the service layer."""
