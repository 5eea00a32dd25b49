"""CVAE multiple scattering for sphere tracing."""
