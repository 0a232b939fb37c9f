"""The vxflow OpenFlow controller: an os-ken application (`osken-manager controller.app`)."""
