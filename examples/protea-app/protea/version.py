# What the API reports as its version; a commit that changes only this is an "API change".
VERSION = "v1"
