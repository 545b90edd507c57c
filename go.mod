module github.com/moat-mqtt/moat

go 1.26.8
