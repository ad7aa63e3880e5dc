# ngx_aws_token: build the shipped Lua from TypeScript, test it in real nginx.

SHELL := /bin/bash
LUA_OUT := lua/ngx_aws_token.lua
APT_PACKAGES := nginx-light libnginx-mod-http-lua lua-resty-core luajit2 \
	lua-busted luarocks awscli lua-cjson lua-check wrk curl procps

.PHONY: all deps apt node npm build check-built typecheck lint test demo bench clean

all: build

## deps: install what the build and the tests need; skips what is there
deps: apt node npm

# Debian's packages; installing them needs root
apt:
	@missing=; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' \
			|| missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# Node.js runs the build and the AWS endpoint stub; Debian's will do
node:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
		echo "installing: nodejs npm"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq nodejs npm >/dev/null; }

npm: node node_modules/.package-lock.json

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error

## build: regenerate lua/ngx_aws_token.lua from src/
build: npm
	npx --no-install tstl -p tstl.json

## check-built: fail when the committed Lua differs from a fresh build
check-built: npm
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	npx --no-install tstl -p tstl.json --outDir "$$tmp" && \
	if cmp -s "$$tmp/ngx_aws_token.lua" $(LUA_OUT); then \
		echo "$(LUA_OUT) matches a fresh build of src/"; \
	else \
		echo "$(LUA_OUT) differs from a fresh build of src/: run make build"; \
		diff -u $(LUA_OUT) "$$tmp/ngx_aws_token.lua" | head -40; exit 1; \
	fi

typecheck: npm
	npx --no-install tsc -p tsconfig.json --noEmit

lint:
	luacheck $(LUA_OUT) spec/

## test: every check and every spec; ends with "N passed, N failed"
test: deps
	@bash spec/run.sh

## demo: nginx on localhost proxying with a token rotated by the AWS CLI
demo: apt node
	@bash nginx/demo.sh

## bench: request latency while a token command runs, ours beside 1.0's
bench: apt
	@bash nginx/bench.sh

clean:
	rm -rf node_modules
