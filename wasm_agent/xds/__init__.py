"""The xDS proxy between Envoy and istiod, and the ECDS conversion it applies."""
