"""The dataset tool's machinery; `dataset_tool.py` at the repository root is its command line.

Modules, in the order a conversion uses them:
    config      ToolConfig (one run's options), --resolution parsing, validate_config().
    sources     open_source(): folders, zips, LSUN LMDB, CIFAR-10, MNIST and demo:shapes, decoding, labels.
    shapes      The demo:shapes renderer.
    transforms  Mode and channel conversion, resize and the --transform crops: prepare_image().
    png         The PNG encoder of the output images.
    convert     convert(): the parallel, in-order conversion loop and its summary.
    writer      DatasetWriter: the zip or folder output, moved into place only when complete.
    info        print_dataset_info(), behind --info.
"""
