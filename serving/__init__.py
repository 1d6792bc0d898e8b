"""The Glassbox server: the ``exported/`` repository over gRPC, on onnxruntime (never torch).

    serve --repository exported --port 8500
"""
