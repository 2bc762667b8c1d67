# Shortcuts; the README's two commands (tools/demo.sh, tools/test.sh) remain the way in.
.PHONY: image image-check seed-example test demo

# The appliance VM image (qcow2, BIOS and UEFI) in images/out/; needs root.
image:
	bash images/build.sh --out images/out

# Build the image, check it, boot three VMs from seeds under qemu (figures printed).
image-check:
	bash tools/test.sh tests/image -s

test:
	bash tools/test.sh

demo:
	bash tools/demo.sh
