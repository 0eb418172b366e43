"""`docteur boot`: a QEMU guest that reads an image through its virtio disk.

`runner` serves the image (nbdkit and the project's plugin), boots QEMU under
TCG and reads each command's output back off the serial console;
`guest_image` builds the kernel and initramfs it boots (cached);
`initramfs/` holds the files that run inside the guest (init, the command
runner, the staging script run by the guest's own Python); `command` is the
CLI verb.
"""

from .runner import BootError, BootResult, CommandResult, boot, reader_command  # noqa: F401
