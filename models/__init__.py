"""The model zoo: the architectures and weights the service can serve."""
