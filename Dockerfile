# A static moat in a minimal, non-root image.
#   docker build -t moat .
#   docker run --rm -p 8883:8883 -v /etc/moat:/etc/moat:ro moat
# Reload without dropping connections: docker kill --signal HUP <container>
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" -o /out/moat ./cmd/moat

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/moat /usr/local/bin/moat
USER nonroot:nonroot
EXPOSE 8883 1883
ENTRYPOINT ["/usr/local/bin/moat"]
CMD ["run", "--config", "/etc/moat/moat.yaml"]
