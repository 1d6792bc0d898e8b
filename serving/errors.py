"""Errors: those a request can earn, each mapped to its gRPC status code by the servicers, and those that stop
the server from starting."""
import grpc


class ServingError(Exception):
    code = grpc.StatusCode.INVALID_ARGUMENT


class InvalidArgument(ServingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServingError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(ServingError):
    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(ServingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(ServingError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class FailedPrecondition(ServingError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class StartupError(Exception):
    """The server cannot start as asked (a bad option, a missing repository, a port in use); the ``serve``
    CLI prints it as one line and exits 2. Library code raises it, never a click error."""


class BadOption(StartupError):
    pass


class RepositoryMissing(StartupError):
    pass


class PortUnavailable(StartupError):
    pass
